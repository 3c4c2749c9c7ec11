//! `cargo afl fuzz -i corpus/querystring_txt -o out/querystring_txt target/release/querystring_txt`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::querystring_txt(data);
    });
}
