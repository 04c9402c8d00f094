//! The request validation of the data plane: raw client bytes through the
//! connection scanner (which follows heads and bodies) and the head judge.
//! Besides not panicking: the verdicts do not depend on how the bytes were
//! split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nio_data_plane::validate::{judge_head, Scanner};

fuzz_target!(|data: &[u8]| {
    let _ = judge_head(data);
    let Some((&split, bytes)) = data.split_first() else {
        return;
    };
    let run = |step: usize| {
        let mut s = Scanner::new(8192);
        let mut seen = Vec::new();
        for piece in bytes.chunks(step.max(1)) {
            s.feed(piece, &mut |n, line, r| seen.push((n, line.to_vec(), r)));
        }
        seen
    };
    assert_eq!(run(bytes.len()), run(usize::from(split % 17) + 1));
});
