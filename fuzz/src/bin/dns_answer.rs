//! `cargo afl fuzz -i corpus/dns_answer -o out/dns_answer target/release/dns_answer`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::dns_answer(data);
    });
}
