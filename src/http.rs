//! A tiny HTTP/1.0 server for `[prometheus]` and `[health_check]`: GET only, one request at a
//! time per listener, `Connection: close`.
//!
//! Hand-written on `std::net` rather than a crate: two read-only endpoints need no more, and
//! every byte of the binary counts on a gateway. Each connection gets [`IO_TIMEOUT`] for
//! reading and writing, and the request head is capped at [`MAX_HEAD_BYTES`], so a slow or
//! hostile client holds the listener for at most that long and cannot make it allocate.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use crate::config::{listen_addr, Config};

/// Deadline of reading a request and of writing the answer.
pub const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// Largest request line plus headers accepted.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;
/// After answering, what the client still sends is read and dropped (up to this many bytes,
/// for up to [`DRAIN_TIMEOUT`]): closing with unread bytes would reset the connection, and the
/// client could lose the answer, the 400 for an oversized request included.
const DRAIN_BYTES: usize = 64 * 1024;
const DRAIN_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    fn text(status: u16, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: format!("{body}\n"),
        }
    }
}

/// What the bytes read so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<'a> {
    /// No blank line yet: read more (up to [`MAX_HEAD_BYTES`]).
    Incomplete,
    /// Not an HTTP request.
    Bad,
    /// Method and path (query string removed).
    Request { method: &'a str, path: &'a str },
}

/// Parses a request head. Never panics on input.
pub fn parse(buf: &[u8]) -> Parsed<'_> {
    let end = find(buf, b"\r\n\r\n").or_else(|| find(buf, b"\n\n"));
    let line_end = find(buf, b"\n");
    let Some(line_end) = line_end else {
        return if buf.len() > MAX_HEAD_BYTES {
            Parsed::Bad
        } else {
            Parsed::Incomplete
        };
    };
    let Ok(line) = std::str::from_utf8(&buf[..line_end]) else {
        return Parsed::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Parsed::Bad;
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !version.starts_with("HTTP/1.") {
        return Parsed::Bad;
    }
    if end.is_none() {
        return Parsed::Incomplete;
    }
    let path = target.split('?').next().unwrap_or(target);
    Parsed::Request { method, path }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

type Handler = Arc<dyn Fn() -> Response + Send + Sync>;

/// The answer to one request: the handler of `path` for GET, else 404 or 405.
pub fn route(routes: &[(String, Handler)], method: &str, path: &str) -> Response {
    let Some((_, handler)) = routes.iter().find(|(p, _)| p == path) else {
        return Response::text(404, "not found");
    };
    if method != "GET" {
        return Response::text(405, "only GET is supported");
    }
    handler()
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

fn write_response(w: &mut impl Write, r: &Response) -> std::io::Result<()> {
    let allow = if r.status == 405 {
        "Allow: GET\r\n"
    } else {
        ""
    };
    write!(
        w,
        "HTTP/1.0 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{}",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len(),
        r.body
    )?;
    w.flush()
}

/// Reads one request from `s` and answers it. Errors (timeouts, resets) just end the connection.
fn handle(mut s: TcpStream, routes: &[(String, Handler)]) {
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    let response = loop {
        match parse(&buf) {
            Parsed::Request { method, path } => break route(routes, method, path),
            Parsed::Bad => break Response::text(400, "bad request"),
            Parsed::Incomplete if buf.len() > MAX_HEAD_BYTES => {
                break Response::text(431, "request head too large")
            }
            Parsed::Incomplete => {}
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return, // closed or timed out before a whole request
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    if let Err(e) = write_response(&mut s, &response) {
        log::debug!("http: cannot answer: {e}");
        return;
    }
    let _ = s.shutdown(Shutdown::Write);
    let _ = s.set_read_timeout(Some(DRAIN_TIMEOUT));
    let mut left = DRAIN_BYTES;
    while left > 0 {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// Binds the enabled endpoints (one listener per distinct `bind`) and serves each on its own
/// thread for the life of the process. An address that cannot be bound is an error naming the
/// key: a user who enabled an endpoint wants it, so the node does not start without it.
pub fn start(cfg: &Config) -> Result<(), String> {
    let cfg = Arc::new(cfg.clone());
    let mut listeners: BTreeMap<String, (&'static str, Vec<(String, Handler)>)> = BTreeMap::new();
    if cfg.prometheus.enable {
        let c = cfg.clone();
        let prefix = crate::metrics::prefix(&cfg.prometheus.namespace, &cfg.prometheus.subsystem);
        let h: Handler = Arc::new(move || {
            let st = crate::status::read(&c).map_err(|e| e.to_string());
            let body = crate::metrics::render(
                &prefix,
                st.as_ref().map_err(String::as_str),
                crate::hlc::now_ms(),
            );
            Response {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body,
            }
        });
        let entry = listeners
            .entry(listen_addr(&cfg.prometheus.bind))
            .or_insert(("[prometheus] bind", Vec::new()));
        entry.1.push((cfg.prometheus.path.clone(), h));
    }
    if cfg.health_check.enable {
        let c = cfg.clone();
        let h: Handler = Arc::new(move || {
            let (status, body) = crate::health::answer(&c);
            Response {
                status,
                content_type: "application/json",
                body,
            }
        });
        let entry = listeners
            .entry(listen_addr(&cfg.health_check.bind))
            .or_insert(("[health_check] bind", Vec::new()));
        entry.1.push((cfg.health_check.path.clone(), h));
    }
    let mut bound = Vec::new();
    for (addr, (key, routes)) in listeners {
        let l =
            TcpListener::bind(&addr).map_err(|e| format!("{key}: cannot listen on {addr}: {e}"))?;
        let paths: Vec<&str> = routes.iter().map(|(p, _)| p.as_str()).collect();
        log::info!("http listening addr={addr} paths={}", paths.join(","));
        bound.push((l, routes));
    }
    for (l, routes) in bound {
        std::thread::Builder::new()
            .name("http".into())
            .spawn(move || {
                for conn in l.incoming() {
                    match conn {
                        Ok(s) => handle(s, &routes),
                        Err(e) => log::debug!("http: accept failed: {e}"),
                    }
                }
            })
            .map_err(|e| format!("cannot start the http thread: {e}"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_and_garbage_is_bad() {
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Parsed::Request {
                method: "GET",
                path: "/metrics"
            }
        );
        assert_eq!(
            parse(b"GET /health?x=1 HTTP/1.0\n\n"),
            Parsed::Request {
                method: "GET",
                path: "/health"
            }
        );
        assert_eq!(
            parse(b"GET /metrics HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Incomplete
        );
        assert_eq!(parse(b"GET /metr"), Parsed::Incomplete);
        assert_eq!(parse(b""), Parsed::Incomplete);
        assert_eq!(
            parse(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"),
            Parsed::Bad
        ); // a TLS hello
        assert_eq!(parse(b"get / HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse(b"GET metrics HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse(b"GET / SPDY/3\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse(b"GET  / HTTP/1.1\r\n\r\n"), Parsed::Bad);
        assert_eq!(parse(&[b'A'; MAX_HEAD_BYTES + 1]), Parsed::Bad);
    }

    #[test]
    fn routing_answers_404_and_405() {
        let h: Handler = Arc::new(|| Response::text(200, "hi"));
        let routes = vec![("/a".to_string(), h)];
        assert_eq!(route(&routes, "GET", "/a").body, "hi\n");
        assert_eq!(route(&routes, "GET", "/b").status, 404);
        assert_eq!(route(&routes, "POST", "/a").status, 405);
        let mut out = Vec::new();
        write_response(&mut out, &Response::text(405, "no")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "HTTP/1.0 405 Method Not Allowed\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nAllow: GET\r\nConnection: close\r\n\r\nno\n"
        );
    }
}
