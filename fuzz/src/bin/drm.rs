//! `cargo afl fuzz -i corpus/drm -o out/drm target/release/drm`
fn main() {
    afl::fuzz!(|data: &[u8]| {
        cairn::fuzzing::drm(data);
    });
}
