#!/usr/bin/env python3
"""A realistic SQLite database for bench/sqlite.sh, and its 1 % churn.

    sqlite_data.py generate FILE ROWS [wal|delete]   users (ROWS/10), orders (ROWS), events (ROWS/3)
    sqlite_data.py churn FILE SEED MODE              updates: 1 % of rows updated (scattered);
                                                     mixed: 1 % changed (0.5 % updated, 0.4 % inserted,
                                                     0.1 % deleted); churnsh: as bench/lib/churn.sh
                                                     (1 % updated, 1 % inserted, 0.1 % deleted)
"""
import json
import random
import sqlite3
import sys

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
         "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def text(r, n):
    return " ".join(r.choice(WORDS) for _ in range(n))


def user(r, i):
    return (f"user{i}", f"user{i}@example.com", text(r, 3), r.randint(0, 5))


def order(r, users):
    return (r.randint(1, users), round(r.random() * 500, 2), r.choice(("new", "paid", "shipped", "returned")),
            text(r, r.randint(2, 8)), f"2026-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}")


def event(r, users):
    payload = {"page": f"/p/{r.randint(1, 5000)}", "ms": r.randint(1, 3000), "ua": text(r, 2)}
    return (r.randint(1, users), r.choice(("view", "click", "buy")), json.dumps(payload))


def generate(path, rows, mode):
    r = random.Random(1)
    users = max(rows // 10, 1)
    c = sqlite3.connect(path)
    c.execute(f"PRAGMA journal_mode={mode}")
    c.executescript("""
        CREATE TABLE users (id INTEGER PRIMARY KEY, login TEXT UNIQUE, email TEXT, bio TEXT, level INTEGER);
        CREATE TABLE orders (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), amount REAL,
                             status TEXT, note TEXT, day TEXT);
        CREATE INDEX orders_user ON orders (user_id);
        CREATE TABLE events (id INTEGER PRIMARY KEY, user_id INTEGER REFERENCES users(id), kind TEXT, payload TEXT);
    """)
    c.executemany("INSERT INTO users (login, email, bio, level) VALUES (?, ?, ?, ?)",
                  (user(r, i) for i in range(users)))
    c.executemany("INSERT INTO orders (user_id, amount, status, note, day) VALUES (?, ?, ?, ?, ?)",
                  (order(r, users) for _ in range(rows)))
    c.executemany("INSERT INTO events (user_id, kind, payload) VALUES (?, ?, ?)",
                  (event(r, users) for _ in range(rows // 3)))
    c.commit()
    c.close()


def churn(path, seed, mode):
    """Changes the rows of every table (orders and events; users are only updated):
    updates: 1 % updated (scattered: every 100th id);
    mixed:   1 % changed: 0.5 % updated (scattered), 0.4 % inserted, 0.1 % deleted;
    churnsh: what bench/lib/churn.sh does to PostgreSQL: 1 % updated, 0.1 % deleted, 1 % inserted."""
    updated, inserted = {"updates": (100, 0), "mixed": (200, 0.4), "churnsh": (100, 1.0)}[mode]
    r = random.Random(seed)
    c = sqlite3.connect(path)
    users = c.execute("SELECT max(id) FROM users").fetchone()[0]
    c.execute("UPDATE users SET level = level + 1 WHERE id % ? = 0", (updated,))
    c.execute("UPDATE orders SET amount = amount + 1, status = 'paid' WHERE id % ? = 0", (updated,))
    c.execute("UPDATE events SET payload = json_set(payload, '$.ms', ?) WHERE id % ? = 0", (r.randint(1, 3000), updated))
    if not inserted:
        c.commit()
        return
    for table in ("orders", "events"):
        c.execute(f"DELETE FROM {table} WHERE id % 1000 = 999")
        n = int(c.execute(f"SELECT count(*) FROM {table}").fetchone()[0] * inserted / 100)
        if table == "orders":
            c.executemany("INSERT INTO orders (user_id, amount, status, note, day) VALUES (?, ?, ?, ?, ?)",
                          (order(r, users) for _ in range(n)))
        else:
            c.executemany("INSERT INTO events (user_id, kind, payload) VALUES (?, ?, ?)",
                          (event(r, users) for _ in range(n)))
    c.commit()
    c.close()


if __name__ == "__main__":
    if sys.argv[1] == "generate":
        generate(sys.argv[2], int(sys.argv[3]), sys.argv[4] if len(sys.argv) > 4 else "wal")
    elif sys.argv[1] == "churn":
        churn(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    else:
        sys.exit(__doc__)
