//! FastCDC 2020 against the reference vectors that remote-apis v2.12.0 publishes
//! (build/bazel/remote/execution/v2/fastcdc2020_test_vectors.txt): the image
//! SekienAkashita.jpg from fastcdc-rs, min 4096, avg 16384, max 65535, normalization 2.

use fastcdc::v2020::{Normalization, StreamCDC};

use super::FastCdcParams;
use crate::digest::{Digest, DigestFunction};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/SekienAkashita.jpg"
);

/// (offset, length, sha256, gear hash at the cut) per seed, as the vectors file lists them.
const SEED_0: &[(u64, usize, &str, u64)] = &[
    (
        0,
        19186,
        "0f9efa589121d5d9e9e2c4ace91337d77cae866537143f6f15a0ffd525a77c2d",
        17583755766661134474,
    ),
    (
        19186,
        19279,
        "c7c86a165573c16448cda35c9169742e85645af42be22889f8b96b8ee0ec7cb0",
        4098594969649699419,
    ),
    (
        38465,
        17354,
        "bc88521e28a8b4479cdea5f75aa721a24f3a0a7d0be903aa6d505c574e51e89d",
        2365586132076908760,
    ),
    (
        55819,
        16387,
        "4b8dac2652e4685c629d2bb1ae9d4448e676b86f2e67ca0b2fff3d9580184b79",
        16009206469796846404,
    ),
    (
        72206,
        19940,
        "c0a7062da6f2386c28e086ee0cedd5732252741269838773cff1ddb05b2df6ed",
        2473608525189754172,
    ),
    (
        92146,
        17320,
        "7fa5b12134dc75cd2ac8dc60d3a8f3c8d22f0ee9d4cf74a4aa937e2a0d2d79a5",
        2504464741100432583,
    ),
];
const SEED_666: &[(u64, usize, &str, u64)] = &[
    (
        0,
        17635,
        "cb3a9d80a3569772d4ed331ca37ab0c862c759897b890fc1aac90a4f2ea3a407",
        17021115692437263050,
    ),
    (
        17635,
        17334,
        "d758c6b7b0b7eef1e996f8ccd17de6c645360b03a26c35541e7581348ac08944",
        8231525949846907466,
    ),
    (
        34969,
        19136,
        "24846aefd89e510594bae3e9d7d5ea5012067601512610fed126a3c57ba993f5",
        10944310959829698982,
    ),
    (
        54105,
        17467,
        "efa785e1fefb49f190e665f72fd246c1442079874508c312196da1fb3040d00b",
        13602876513398592944,
    ),
    (
        71572,
        23593,
        "a2f557bdd8d40d8faada963ad5f91ec54b10ccee7c5ae72754a65137592dc607",
        2945079350535657389,
    ),
    (
        95165,
        14301,
        "e131100b4a7147ccad19dc63c4a2fac1f5d8b644e1373eeb6803825024234efc",
        8981594897574481255,
    ),
];

fn fixture() -> Vec<u8> {
    let data = std::fs::read(FIXTURE).expect("tests/fixtures/SekienAkashita.jpg");
    assert_eq!(
        Digest::of(DigestFunction::Sha256, &data).hash_hex(),
        "d9e749d9367fc908876749d6502eb212fee88c9a94892fb07da5ef3ba8bc39ed",
        "the fixture is the one the vectors were made from"
    );
    data
}

fn check(seed: u64, expected: &[(u64, usize, &str, u64)]) {
    let data = fixture();
    let cut: Vec<_> =
        StreamCDC::with_level_and_seed(&data[..], 4096, 16384, 65535, Normalization::Level2, seed)
            .map(|c| c.unwrap())
            .collect();
    assert_eq!(cut.len(), expected.len(), "seed {seed}");
    for (chunk, (offset, length, sha256, gear)) in cut.iter().zip(expected) {
        assert_eq!(
            (chunk.offset, chunk.length),
            (*offset, *length),
            "seed {seed}"
        );
        assert_eq!(
            Digest::of(DigestFunction::Sha256, &chunk.data).hash_hex(),
            *sha256
        );
        assert_eq!(chunk.hash, *gear, "seed {seed} at {offset}");
    }
}

#[test]
fn fastcdc_2020_matches_the_reference_vectors_seed_0() {
    check(0, SEED_0);
}

#[test]
fn fastcdc_2020_matches_the_reference_vectors_seed_666() {
    check(666, SEED_666);
}

/// The server's own cutter (min = avg/4, max = 4·avg) gives the same cuts at avg 16 KiB; the
/// vectors' max of 65535 instead of 65536 changes nothing on this input.
#[test]
fn advertised_parameters_cut_as_the_vectors() {
    let data = fixture();
    for (seed, expected) in [(0u32, SEED_0), (666, SEED_666)] {
        let params = FastCdcParams { avg: 16384, seed };
        let lengths: Vec<usize> = params
            .chunks(&data[..])
            .map(|c| c.unwrap().length)
            .collect();
        let want: Vec<usize> = expected.iter().map(|e| e.1).collect();
        assert_eq!(lengths, want, "seed {seed}");
    }
}
