//! A test-only HTTP/1.1 proxy between pgbackd and an S3 server that fails one request in N,
//! deterministically (so a test's failure share is exact, not a dice roll): in turn a connection
//! reset, a 500 InternalError and a 503 SlowDown. Everything else is forwarded unchanged (the
//! Host header is kept, so signatures stay valid). Or ([`FaultProxy::denying`]) a server whose
//! bucket policy denies everything: 403 AccessDenied to every request.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

#[derive(Default)]
pub struct Stats {
    pub requests: AtomicU64,
    pub failed: AtomicU64,
}

pub struct FaultProxy {
    pub endpoint: String,
    pub stats: Arc<Stats>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (`http://host:port`) failing every `one_in`-th request
    /// (1: all of them).
    pub fn start(upstream: &str, one_in: u64) -> FaultProxy {
        Self::with(upstream, one_in, false)
    }

    /// A proxy answering every request 403 AccessDenied, as S3 does for a key its policy denies.
    pub fn denying(upstream: &str) -> FaultProxy {
        Self::with(upstream, 1, true)
    }

    fn with(upstream: &str, one_in: u64, deny: bool) -> FaultProxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let rt = crate::s3_servers::rt();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let stats = Arc::new(Stats::default());
        let s = stats.clone();
        rt.spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (upstream, stats) = (upstream.clone(), s.clone());
                tokio::spawn(async move {
                    let _ = serve(client, &upstream, one_in, deny, &stats).await;
                });
            }
        });
        FaultProxy { endpoint, stats }
    }
}

struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
    close: bool,
}

/// Reads one HTTP/1.1 message (head + body by Content-Length or chunked). `None` at EOF.
async fn read_message<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    no_body: bool,
) -> std::io::Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let mut line = Vec::new();
        let n = r.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(None);
        }
        head.extend_from_slice(&line);
        if line == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header =
        |name: &str| text.lines().find_map(|l| l.strip_prefix(&format!("{name}:")).map(|v| v.trim().to_owned()));
    let close = header("connection").is_some_and(|v| v == "close");
    let mut body = Vec::new();
    if !no_body {
        if header("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            loop {
                let mut size_line = Vec::new();
                r.read_until(b'\n', &mut size_line).await?;
                body.extend_from_slice(&size_line);
                let size_text = String::from_utf8_lossy(&size_line);
                let size = usize::from_str_radix(size_text.trim().split(';').next().unwrap_or("0"), 16).unwrap_or(0);
                if size == 0 {
                    // trailers until the empty line
                    loop {
                        let mut l = Vec::new();
                        r.read_until(b'\n', &mut l).await?;
                        body.extend_from_slice(&l);
                        if l == b"\r\n" || l.is_empty() {
                            break;
                        }
                    }
                    break;
                }
                let mut chunk = vec![0u8; size + 2];
                r.read_exact(&mut chunk).await?;
                body.extend_from_slice(&chunk);
            }
        } else if let Some(len) = header("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(len, 0);
            r.read_exact(&mut body).await?;
        }
    }
    Ok(Some(Message { head, body, close }))
}

async fn serve(client: TcpStream, upstream: &str, one_in: u64, deny: bool, stats: &Stats) -> std::io::Result<()> {
    let (cr, mut cw) = client.into_split();
    let mut cr = BufReader::new(cr);
    let mut up: Option<(BufReader<tokio::net::tcp::OwnedReadHalf>, tokio::net::tcp::OwnedWriteHalf)> = None;
    while let Some(req) = read_message(&mut cr, false).await? {
        let n = stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let is_head = req.head.starts_with(b"HEAD ");
        if n.is_multiple_of(one_in) {
            let k = stats.failed.fetch_add(1, Ordering::Relaxed);
            match if deny { 3 } else { k % 3 } {
                0 => {
                    // connection reset
                    let stream = cr.into_inner().reunite(cw).map_err(std::io::Error::other)?;
                    // a zero linger makes close send RST and does not block
                    #[allow(deprecated)]
                    stream.set_linger(Some(std::time::Duration::ZERO))?;
                    drop(stream);
                    return Ok(());
                }
                n => {
                    let (status, code) = match n {
                        1 => ("500 Internal Server Error", "InternalError"),
                        2 => ("503 Slow Down", "SlowDown"),
                        _ => ("403 Forbidden", "AccessDenied"),
                    };
                    let body = format!(
                        "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
                    );
                    let resp = format!(
                        "HTTP/1.1 {status}\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{}",
                        if is_head { 0 } else { body.len() },
                        if is_head { "" } else { &body }
                    );
                    cw.write_all(resp.as_bytes()).await?;
                    continue;
                }
            }
        }
        if up.is_none() {
            let s = TcpStream::connect(upstream).await?;
            let (r, w) = s.into_split();
            up = Some((BufReader::new(r), w));
        }
        let (ur, uw) = up.as_mut().expect("connected above");
        uw.write_all(&req.head).await?;
        uw.write_all(&req.body).await?;
        let resp = match read_message(ur, is_head).await? {
            Some(r) => r,
            None => return Ok(()),
        };
        // 1xx, 204 and 304 have no body either; S3 does not send them for these requests
        cw.write_all(&resp.head).await?;
        cw.write_all(&resp.body).await?;
        if resp.close || req.close {
            return Ok(());
        }
    }
    Ok(())
}
