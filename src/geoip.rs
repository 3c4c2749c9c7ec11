//! GeoIP for `$IP[KR]`-style conditions (MOD-6): a MaxMind `.mmdb` database read
//! with the `maxminddb` crate, named by `<Server><ServiceAccess GeoIP="path">`.

use crate::policy::{GeoInfo, GeoLookup};
use maxminddb::{geoip2, Reader};
use std::net::IpAddr;
use std::path::Path;

pub struct GeoDb {
    reader: Reader<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
#[error("GeoIP database {path}: {reason}")]
pub struct GeoError {
    pub path: String,
    pub reason: String,
}

impl GeoDb {
    /// Loads the whole database into memory (country databases are a few MiB).
    pub fn open(path: &Path) -> Result<GeoDb, GeoError> {
        let reader = Reader::open_readfile(path).map_err(|e| GeoError {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(GeoDb { reader })
    }

    pub fn database_type(&self) -> &str {
        &self.reader.metadata.database_type
    }
}

impl GeoLookup for GeoDb {
    fn country(&self, ip: IpAddr) -> Option<GeoInfo<'_>> {
        let ip = match ip {
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map(IpAddr::V4)
                .unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        let rec: geoip2::Country<'_> = self.reader.lookup(ip).ok()??;
        Some(GeoInfo {
            country2: rec.country.as_ref().and_then(|c| c.iso_code).unwrap_or(""),
            country3: "",
            continent: rec.continent.as_ref().and_then(|c| c.code).unwrap_or(""),
        })
    }
}
