//! The short run of every fuzz target (scripts/test, docs/fuzzing.md): each committed corpus
//! input (`fuzz/corpus/<target>/`), then a bounded number of inputs mutated from them, run
//! through the same target bodies the coverage-guided harnesses call, in the release build
//! the suite already made. No coverage guidance: scripts/fuzz is the long, guided run.
//!
//! The mutations are seeded from `STREAMGATE_FUZZ_SEED`, else from the clock; the seed is
//! printed, and a failing input is printed escaped, to be added to the corpus and fixed.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Texts the parsers give meaning to, spliced into mutants: a blind byte flip rarely
/// makes a digit run overflow or a tag appear.
const TOKENS: &[&[u8]] = &[
    b"0",
    b"-",
    b",",
    b"=",
    b"\n",
    b"\r",
    b" ",
    b"\t",
    b"#",
    b"%",
    b"@",
    b":",
    b"/",
    b"\\",
    b".",
    b"\"",
    b"[",
    b"]",
    b"{",
    b"}",
    b"\xef\xbb\xbf",
    b"\xff",
    b"18446744073709551615",
    b"18446744073709551616",
    b"99999999999999999999999",
    b"bytes=",
    b"#EXT-X-BYTERANGE:",
    b"#EXT-X-MAP:URI=",
    b"#EXT-X-KEY:METHOD=AES-128,URI=",
    b"#EXT-X-ENDLIST",
    b"#EXTINF:1,\n",
    b"[[tenant]]\n",
    b"http://",
    b"https://[::1]",
    b"xn--",
];

fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let seed = std::env::var("STREAMGATE_FUZZ_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
                now.as_nanos() as u64
            });
        println!("STREAMGATE_FUZZ_SEED={seed}");
        seed
    })
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// One to four edits of a corpus input: bit flips, bytes set, inserted, deleted,
/// duplicated, a token spliced in, or the head of another input.
fn mutate(rng: &mut StdRng, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut input = corpus[rng.gen_range(0..corpus.len())].clone();
    for _ in 0..rng.gen_range(1..=4) {
        let at = rng.gen_range(0..=input.len());
        match rng.gen_range(0..7) {
            0 if at < input.len() => input[at] ^= 1 << rng.gen_range(0..8),
            1 if at < input.len() => input[at] = rng.r#gen(),
            2 => input.insert(at, rng.r#gen()),
            3 => {
                let end = rng.gen_range(at..=input.len().min(at + 16));
                input.drain(at..end);
            }
            4 => {
                let end = rng.gen_range(at..=input.len().min(at + 64));
                let chunk = input[at..end].to_vec();
                input.splice(at..at, chunk);
            }
            5 => {
                let token = TOKENS[rng.gen_range(0..TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            _ => {
                let other = &corpus[rng.gen_range(0..corpus.len())];
                let cut = rng.gen_range(0..=other.len());
                input.truncate(at);
                input.extend_from_slice(&other[cut..]);
            }
        }
    }
    input
}

/// Runs `input`; a panic (a finding) fails the test with the input, escaped.
fn run_one(target: &str, run: fn(&[u8]) -> bool, input: &[u8]) -> bool {
    catch_unwind(AssertUnwindSafe(|| run(input))).unwrap_or_else(|_| {
        panic!(
            "target {target} panicked on b\"{}\" (seed {})",
            input.escape_ascii(),
            seed()
        )
    })
}

/// Every corpus input, at least one of them accepted (the corpus still reaches the
/// parser's accepting path), then `mutants` mutated inputs.
fn replay(target: &str, run: fn(&[u8]) -> bool, mutants: usize) {
    let corpus = corpus(target);
    let accepted = corpus.iter().filter(|i| run_one(target, run, i)).count();
    assert!(
        accepted > 0,
        "no input of fuzz/corpus/{target} is accepted: the corpus has gone stale"
    );
    let mut rng = StdRng::seed_from_u64(seed() ^ target.len() as u64);
    let mut accepted_mutants = 0;
    for _ in 0..mutants {
        accepted_mutants += usize::from(run_one(target, run, &mutate(&mut rng, &corpus)));
    }
    println!(
        "{target}: {} corpus inputs ({accepted} accepted), {mutants} mutants ({accepted_mutants} accepted)",
        corpus.len()
    );
}

#[test]
fn decode() {
    replay("decode", streamgate_fuzz::decode, 200_000);
}

#[test]
fn url() {
    replay("url", streamgate_fuzz::url, 200_000);
}

#[test]
fn range() {
    replay("range", streamgate_fuzz::range, 200_000);
}

#[test]
fn config() {
    replay("config", streamgate_fuzz::config, 20_000);
}

#[test]
fn hls() {
    replay("hls", streamgate_fuzz::hls, 100_000);
}

#[test]
fn token() {
    replay("token", streamgate_fuzz::token, 20_000);
}
