//! Following a fill: the same head, then the body from the segment as far as the
//! leader (on whichever shard) has written it.

use crate::cache::fill::{FillEnd, Watch};
use crate::cache::CacheResult;
use crate::exchange::{Downstream, ExchangeError, Head};
use crate::proxy::pass;
use crate::proxy::request::RequestCtx;
use crate::proxy::response::{self, origin_body, Extras};

pub async fn follow<D: Downstream>(
    cx: &RequestCtx<'_>,
    down: &mut D,
    fill: Watch,
    result: CacheResult,
) -> Result<(), ExchangeError> {
    let oo = &cx.vhost.origin_options;
    let wait = oo.connect_timeout + oo.receive_timeout;
    let mut offset = 0u64;
    let mut started = false;
    let gone = |_| ExchangeError::ClientGone;
    loop {
        let Ok(p) = tokio::time::timeout(wait, fill.next(offset, started)).await else {
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
        if p.written > offset {
            // The written prefix, under its own lease: nothing is copied or held.
            let Some(piece) = p.body.as_ref().and_then(|b| b.bytes(offset, p.written)) else {
                let _ = down.flush().await;
                return Err(ExchangeError::FillFailed);
            };
            // The piece leases the segment: bounded as a hit's send is.
            let bound = cx.server.lease_bound(piece.len() as u64);
            tokio::time::timeout(bound, response::send_piece(cx, down, Some(offset), piece))
                .await
                .map_err(|_| ExchangeError::ClientTooSlow)?
                .map_err(gone)?;
            offset = p.written;
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
