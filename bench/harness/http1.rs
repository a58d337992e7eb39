//! Just enough HTTP/1.1 client for the harness: response heads, `Content-Length` and chunked
//! bodies, a blocking one-shot `get` for setup and a keep-alive async connection for load.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn bad(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(usize),
    Chunked,
    /// Body until the connection closes.
    Close,
}

#[derive(Debug)]
pub struct Head {
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
}

/// Parses a response head at the start of `buf`; `None` while it is incomplete.
pub fn parse_head(buf: &[u8]) -> io::Result<Option<Head>> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 64 * 1024 {
            return Err(bad("response head over 64 KiB"));
        }
        return Ok(None);
    };
    let text = std::str::from_utf8(&buf[..end]).map_err(|_| bad("non-UTF-8 head"))?;
    let mut lines = text.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad(format!("bad status line {status_line:?}")))?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            framing = Framing::Length(value.parse().map_err(|_| bad("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            && value.to_ascii_lowercase().contains("chunked")
        {
            framing = Framing::Chunked;
            break;
        }
    }
    if matches!(status, 204 | 304) {
        framing = Framing::Length(0);
    }
    Ok(Some(Head {
        len: end + 4,
        status,
        framing,
    }))
}

/// Incremental chunked-body decoder.
#[derive(Debug, Default)]
pub struct Chunked {
    state: ChunkState,
    line: Vec<u8>,
}

#[derive(Debug, Default, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data(usize),
    DataEnd,
    Trailer,
    Done,
}

impl Chunked {
    /// Consumes `input`, appending body bytes to `out`; returns how many input bytes it used
    /// (all of them unless the body ended inside `input`).
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> io::Result<usize> {
        let mut i = 0;
        while i < input.len() && self.state != ChunkState::Done {
            match self.state {
                ChunkState::Data(n) => {
                    let take = n.min(input.len() - i);
                    out.extend_from_slice(&input[i..i + take]);
                    i += take;
                    self.state = if take == n {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(n - take)
                    };
                }
                _ => {
                    self.line.push(input[i]);
                    i += 1;
                    if self.line.ends_with(b"\r\n") {
                        let line = std::mem::take(&mut self.line);
                        let line = &line[..line.len() - 2];
                        self.state = match self.state {
                            ChunkState::Size => {
                                let hex = std::str::from_utf8(line)
                                    .ok()
                                    .and_then(|l| l.split(';').next())
                                    .map(str::trim)
                                    .unwrap_or_default();
                                let n = usize::from_str_radix(hex, 16)
                                    .map_err(|_| bad(format!("bad chunk size {hex:?}")))?;
                                if n == 0 {
                                    ChunkState::Trailer
                                } else {
                                    ChunkState::Data(n)
                                }
                            }
                            ChunkState::DataEnd if line.is_empty() => ChunkState::Size,
                            ChunkState::DataEnd => return Err(bad("chunk not followed by CRLF")),
                            ChunkState::Trailer if line.is_empty() => ChunkState::Done,
                            _ => ChunkState::Trailer,
                        };
                    } else if self.line.len() > 4096 {
                        return Err(bad("chunk line too long"));
                    }
                }
            }
        }
        Ok(i)
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }
}

/// One-shot blocking `GET` (Connection: close), for setup and checks.
pub fn get(port: u16, path: &str, headers: &[(&str, String)]) -> io::Result<(u16, Vec<u8>)> {
    request(port, "GET", path, headers, b"")
}

pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> io::Result<(u16, Vec<u8>)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut req =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if !body.is_empty() {
        req.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let head = parse_head(&raw)?.ok_or_else(|| bad("incomplete response head"))?;
    let rest = &raw[head.len..];
    let body = match head.framing {
        Framing::Length(n) => rest[..n.min(rest.len())].to_vec(),
        Framing::Close => rest.to_vec(),
        Framing::Chunked => {
            let mut out = Vec::new();
            Chunked::default().feed(rest, &mut out)?;
            out
        }
    };
    Ok((head.status, body))
}

/// A keep-alive client connection for load generation.
pub struct Conn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn connect(port: u16) -> io::Result<Conn> {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `req` (a complete request) and reads the whole response; returns its status.
    pub async fn roundtrip(&mut self, req: &[u8]) -> io::Result<u16> {
        self.stream.write_all(req).await?;
        self.buf.clear();
        let head = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            self.read_more().await?;
        };
        match head.framing {
            Framing::Length(n) => {
                while self.buf.len() < head.len + n {
                    self.read_more().await?;
                }
            }
            Framing::Chunked => {
                let mut dec = Chunked::default();
                let mut sink = Vec::new();
                let mut pos = head.len;
                loop {
                    pos += dec.feed(&self.buf[pos..], &mut sink)?;
                    if dec.done() {
                        break;
                    }
                    self.read_more().await?;
                }
            }
            Framing::Close => return Err(bad("response without length on keep-alive")),
        }
        Ok(head.status)
    }

    async fn read_more(&mut self) -> io::Result<()> {
        let mut tmp = [0u8; 16 * 1024];
        let n = self.stream.read(&mut tmp).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_in_pieces() {
        let body = b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n\r\nNEXT";
        for split in 0..body.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let a = d.feed(&body[..split], &mut out).unwrap();
            let b = d.feed(&body[split..], &mut out).unwrap();
            assert_eq!(out, b"hello world");
            assert!(d.done());
            assert_eq!(a + b, body.len() - 4);
        }
    }
}
