//! Start-run bodies above Pingora's 64 KiB replay buffer cannot be forwarded by the proxy loop
//! once `request_filter` has read them (PINGORA-NOTES). This rare case is sent to the chosen
//! coordinator by the gateway's own pooled client, and the answer relayed as it came.

use crate::errors::ApiError;
use crate::headers;
use crate::proxy::{Ctx, State};
use crate::upstream::http_client;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Coordinator answers to a start-run are one `Run`; anything far larger is not one.
const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

pub struct Answer {
    pub status: u16,
    headers: Vec<(String, Vec<u8>)>,
    body: Bytes,
}

/// Sends the validated body to a coordinator, failing over to another one only while no
/// connection was made (the request never reached anyone, so it cannot be a duplicate).
pub async fn forward(
    state: &State,
    ctx: &mut Ctx,
    req: &RequestHeader,
    body: Bytes,
) -> Result<Answer, ApiError> {
    let target = req.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let hop = headers::hop_by_hop_names(&req.headers);
    loop {
        let Some(id) = state.upstreams.select(b"", &ctx.tried) else {
            return Err(ApiError::coordinator_unavailable(
                503,
                None,
                "no coordinator available",
            ));
        };
        ctx.tried.push(id);
        let c = state.upstreams.coordinator(id);
        let mut rb = http_client()
            .post(format!("{}{}", c.base_url, target))
            .timeout(state.cfg.upstream.request_timeout)
            .body(body.clone());
        for (k, v) in req.headers.iter() {
            let name = k.as_str();
            if hop.iter().any(|h| h == name)
                || matches!(
                    name,
                    "host" | "authorization" | "content-length" | "transfer-encoding"
                )
            {
                continue;
            }
            rb = rb.header(k, v);
        }
        if let Some(t) = ctx.upstream_token() {
            rb = rb.bearer_auth(t);
        }
        rb = rb
            .header("X-Request-Id", ctx.request_id.as_str())
            .header("X-Forwarded-Proto", "http");
        match rb.send().await {
            Ok(resp) => return read_answer(resp, &c.base_url).await,
            Err(e) if e.is_connect() => {
                state.upstreams.eject(id);
                if ctx.tried.len() >= state.upstreams.coordinators().len() {
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
