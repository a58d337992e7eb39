//! Calls the gateway makes to a coordinator with its own pooled client instead of Pingora's
//! proxy loop, for the two cases that loop cannot serve: start-run bodies above its 64 KiB replay
//! buffer (a body read in `request_filter` is not forwarded otherwise: PINGORA-NOTES), and the
//! events answer whose content type can only be decided after its whole body (the JSON-string
//! repair). The request head is prepared by the same function the proxy loop uses.

use crate::errors::ApiError;
use crate::proxy::{prepare_upstream_request, Ctx, State};
use crate::upstream::{http_client, Target};
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// A start-run answer is one `Run`; an events answer that is buffered is a finished, bounded
/// list. Anything far larger is not a sane answer.
const MAX_ANSWER_BYTES: usize = 32 * 1024 * 1024;

pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Bytes,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    pub fn set_header(&mut self, name: &str, value: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        self.headers
            .push((name.to_string(), value.as_bytes().to_vec()));
    }
}

/// Sends the request to `pinned`, or to a coordinator chosen like the proxy loop does, failing
/// over to another one only while no connection was made (the request never reached anyone,
/// so it cannot be a duplicate).
pub async fn send(
    state: &State,
    ctx: &mut Ctx,
    client_req: &RequestHeader,
    client_ip: Option<&str>,
    body: Option<Bytes>,
    pinned: Option<Target>,
) -> Result<Answer, ApiError> {
    loop {
        let target = match pinned {
            Some(t) => t,
            None => state.upstreams.select(b"", &ctx.tried).ok_or_else(|| {
                ApiError::coordinator_unavailable(503, None, "no coordinator available")
            })?,
        };
        if pinned.is_none() {
            ctx.tried.push(target);
        }
        let c = state.upstreams.coordinator(target.id);
        // Plain HTTP goes to the exact address chosen (Host names the coordinator); HTTPS by
        // name, so the certificate can be verified.
        let origin = if c.tls {
            c.base_url.clone()
        } else {
            format!("http://{}", target.addr)
        };
        let mut req = client_req.clone();
        prepare_upstream_request(&mut req, ctx, client_ip, Some(c))
            .map_err(|_| ApiError::internal())?;
        let path = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut rb = http_client()
            .request(req.method.clone(), format!("{origin}{path}"))
            .timeout(state.cfg.upstream.request_timeout);
        for (k, v) in req.headers.iter() {
            // The client library frames the body itself.
            if !matches!(k.as_str(), "content-length" | "transfer-encoding") {
                rb = rb.header(k, v);
            }
        }
        if let Some(b) = &body {
            rb = rb.body(b.clone());
        }
        match rb.send().await {
            Ok(resp) => return read_answer(resp, &c.base_url).await,
            Err(e) if e.is_connect() && pinned.is_none() => {
                state.upstreams.eject(target);
                if state.upstreams.all_tried(&ctx.tried) {
                    let status = if ctx.tried.len() > 1 { 503 } else { 502 };
                    return Err(ApiError::coordinator_unavailable(
                        status,
                        Some(&c.base_url),
                        "connection failed",
                    ));
                }
            }
            Err(e) if e.is_timeout() => {
                return Err(ApiError::coordinator_timeout(Some(&c.base_url)))
            }
            Err(_) => {
                return Err(ApiError::coordinator_unavailable(
                    502,
                    Some(&c.base_url),
                    "request failed",
                ))
            }
        }
    }
}

async fn read_answer(mut resp: reqwest::Response, url: &str) -> Result<Answer, ApiError> {
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .filter(|(k, _)| {
            !matches!(
                k.as_str(),
                "connection"
                    | "keep-alive"
                    | "transfer-encoding"
                    | "content-length"
                    | "te"
                    | "trailer"
                    | "upgrade"
            )
        })
        .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
        .collect();
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > MAX_ANSWER_BYTES {
                    return Err(ApiError::coordinator_unavailable(
                        502,
                        Some(url),
                        "answer too large",
                    ));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) if e.is_timeout() => return Err(ApiError::coordinator_timeout(Some(url))),
            Err(_) => {
                return Err(ApiError::coordinator_unavailable(
                    502,
                    Some(url),
                    "answer cut short",
                ))
            }
        }
    }
    Ok(Answer {
        status,
        headers,
        body: Bytes::from(body),
    })
}

pub async fn write(session: &mut Session, ctx: &Ctx, a: Answer) -> pingora::Result<()> {
    let mut resp = ResponseHeader::build(a.status, Some(a.headers.len() + 2))?;
    for (k, v) in a.headers {
        resp.append_header(k, v)?;
    }
    resp.insert_header("Content-Length", a.body.len().to_string())?;
    resp.insert_header("X-Request-Id", ctx.request_id.as_str())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(a.body), true).await
}
