//! Following another request's fill: the same head and the same chunks, as they
//! arrive, from whichever shard leads it.

use crate::cache::fill::{Fill, FillEnd};
use crate::cache::CacheResult;
use crate::exchange::{Downstream, ExchangeError, Head};
use crate::proxy::pass;
use crate::proxy::request::RequestCtx;
use crate::proxy::response::{self, origin_body, Extras};
use std::sync::Arc;

pub async fn follow<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    fill: Arc<Fill>,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let oo = &cx.vhost.origin_options;
    let wait = oo.connect_timeout + oo.receive_timeout;
    let mut seen = 0usize;
    let mut offset = 0u64;
    let mut started = false;
    let gone = |_| ExchangeError::ClientGone;
    loop {
        let Ok(p) = tokio::time::timeout(wait, fill.next(seen, started)).await else {
            let _ = down.flush().await;
            return Err(ExchangeError::FillTimeout);
        };
        if !started {
            if p.end == Some(FillEnd::Pass) {
                // Not shareable: fetch for ourselves, uncached.
                return pass::forward(cx, down, CacheResult::Miss).await;
            }
            let Some(h) = &p.head else {
                if p.end == Some(FillEnd::Failed) {
                    return Err(ExchangeError::FillFailed);
                }
                continue;
            };
            let body = origin_body(h.has_body && h.status != 204, h.length);
            let head = Head::from_lines(h.status, &h.headers, body);
            response::send_head(cx, down, head, &Extras::new(result)).await?;
            started = true;
        }
        seen += p.chunks.len();
        for c in p.chunks {
            let n = c.len() as u64;
            response::send_piece(cx, down, Some(offset), c)
                .await
                .map_err(gone)?;
            offset += n;
        }
        match p.end {
            Some(FillEnd::Complete) => return down.finish().await.map_err(gone),
            Some(_) => {
                let _ = down.flush().await;
                return Err(ExchangeError::FillFailed);
            }
            None => down.flush().await.map_err(gone)?,
        }
    }
}
