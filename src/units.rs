//! Sizes and durations as people read them: `39.8 KiB`, `6h`, `90s`.

/// `n` bytes in binary units with one decimal (`512 B`, `39.8 KiB`, `1.2 GiB`).
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// `d` in the largest unit that divides it exactly, as the config writes durations (`1d`, `6h`,
/// `30m`, `90s`).
pub fn duration(d: std::time::Duration) -> String {
    if d.subsec_millis() != 0 {
        return if d.as_secs() == 0 { format!("{}ms", d.as_millis()) } else { format!("{:.1}s", d.as_secs_f64()) };
    }
    match d.as_secs() {
        s if s > 0 && s.is_multiple_of(86400) => format!("{}d", s / 86400),
        s if s > 0 && s.is_multiple_of(3600) => format!("{}h", s / 3600),
        s if s > 0 && s.is_multiple_of(60) => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// `d` rounded to the two largest units, as people say how long something took, or how long ago
/// or how soon (`291ms`, `3.2s`, `12m 5s`, `21h 44m`, `3d 2h`).
pub fn approx(d: std::time::Duration) -> String {
    let s = d.as_secs();
    match s {
        0..60 => duration(d),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// `n` and `noun`, with an `s` unless `n` is 1 (`1 leftover`, `3 leftovers`).
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 { format!("1 {noun}") } else { format!("{n} {noun}s") }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_like_the_config() {
        assert_eq!([0, 1, 2].map(|n| super::count(n, "leftover")), ["0 leftovers", "1 leftover", "2 leftovers"]);
        assert_eq!(super::bytes(512), "512 B");
        let secs = |s| super::approx(std::time::Duration::from_secs(s));
        assert_eq!([45, 725, 78299, 266400].map(secs), ["45s", "12m 5s", "21h 44m", "3d 2h"]);
        assert_eq!(super::approx(std::time::Duration::from_millis(3250)), "3.2s");
        assert_eq!(super::bytes(40_755), "39.8 KiB");
        assert_eq!(super::bytes(3 << 30), "3.0 GiB");
        let d = std::time::Duration::from_secs;
        assert_eq!(
            [d(0), d(90), d(1800), d(7200), d(172800)].map(super::duration),
            ["0s", "90s", "30m", "2h", "2d"].map(String::from)
        );
        let ms = std::time::Duration::from_millis;
        assert_eq!([ms(500), ms(1500)].map(super::duration), ["500ms", "1.5s"].map(String::from));
    }
}
