//! A tiny MaxMind DB (`.mmdb`) writer, so GeoIP tests build their own database:
//! an IPv4 search tree (24-bit records), a data section of GeoIP2-Country-shaped
//! maps, and the metadata block, per the MaxMind DB format spec 2.0.

/// Encodes MaxMind DB data values.
enum V<'a> {
    Str(&'a str),
    U16(u16),
    U32(u32),
    U64(u64),
    Map(Vec<(&'a str, V<'a>)>),
    Arr(Vec<V<'a>>),
}

fn ctrl(out: &mut Vec<u8>, ty: u8, size: usize) {
    assert!(size < 29, "small values only");
    if ty <= 7 {
        out.push((ty << 5) | size as u8);
    } else {
        out.push(size as u8); // type 0: extended
        out.push(ty - 7);
    }
}

fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
    let bytes = v.to_be_bytes();
    let skip = bytes.iter().take_while(|&&b| b == 0).count();
    ctrl(out, ty, 8 - skip);
    out.extend_from_slice(&bytes[skip..]);
}

fn encode(out: &mut Vec<u8>, v: &V) {
    match v {
        V::Str(s) => {
            ctrl(out, 2, s.len());
            out.extend_from_slice(s.as_bytes());
        }
        V::U16(n) => uint(out, 5, u64::from(*n)),
        V::U32(n) => uint(out, 6, u64::from(*n)),
        V::U64(n) => uint(out, 9, *n),
        V::Map(kv) => {
            ctrl(out, 7, kv.len());
            for (k, v) in kv {
                encode(out, &V::Str(k));
                encode(out, v);
            }
        }
        V::Arr(items) => {
            ctrl(out, 11, items.len());
            for i in items {
                encode(out, i);
            }
        }
    }
}

/// Builds a database mapping IPv4 prefixes to (country ISO code, continent code).
pub fn country_db(entries: &[([u8; 4], u8, &str, &str)]) -> Vec<u8> {
    // Data section: one record per entry.
    let mut data = Vec::new();
    let mut offsets = Vec::new();
    for (_, _, country, continent) in entries {
        offsets.push(data.len() as u32);
        encode(
            &mut data,
            &V::Map(vec![
                ("continent", V::Map(vec![("code", V::Str(continent))])),
                ("country", V::Map(vec![("iso_code", V::Str(country))])),
            ]),
        );
    }
    // Search tree: node i has two children; u32::MAX marks "not set yet".
    let mut nodes: Vec<[u32; 2]> = vec![[u32::MAX; 2]];
    let mut leaves: Vec<(usize, usize, usize)> = Vec::new(); // (node, side, entry)
    for (e, (net, bits, _, _)) in entries.iter().enumerate() {
        let addr = u32::from_be_bytes(*net);
        let mut node = 0usize;
        for depth in 0..*bits as usize {
            let side = ((addr >> (31 - depth)) & 1) as usize;
            if depth + 1 == *bits as usize {
                leaves.push((node, side, e));
            } else {
                if nodes[node][side] == u32::MAX {
                    nodes.push([u32::MAX; 2]);
                    nodes[node][side] = (nodes.len() - 1) as u32;
                }
                node = nodes[node][side] as usize;
            }
        }
    }
    let count = nodes.len() as u32;
    for (node, side, e) in leaves {
        nodes[node][side] = count + 16 + offsets[e];
    }
    let mut out = Vec::new();
    for n in &nodes {
        for &r in n {
            let r = if r == u32::MAX { count } else { r }; // "no data"
            out.extend_from_slice(&r.to_be_bytes()[1..]);
        }
    }
    out.extend_from_slice(&[0u8; 16]);
    out.extend_from_slice(&data);
    out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
    encode(
        &mut out,
        &V::Map(vec![
            ("binary_format_major_version", V::U16(2)),
            ("binary_format_minor_version", V::U16(0)),
            ("build_epoch", V::U64(1_700_000_000)),
            ("database_type", V::Str("GeoIP2-Country")),
            ("description", V::Map(vec![("en", V::Str("cairn test"))])),
            ("ip_version", V::U16(4)),
            ("languages", V::Arr(vec![V::Str("en")])),
            ("node_count", V::U32(count)),
            ("record_size", V::U16(24)),
        ]),
    );
    out
}
