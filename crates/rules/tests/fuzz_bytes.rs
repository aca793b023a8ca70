//! The fuzz entry points on random and mutated inputs (runs in CI; cargo-fuzz needs nightly).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tidemark_rules::fuzzing;

const SEEDS: &[&str] = &[
    "groups:\n- name: a\n  interval: 10s\n  rules:\n  - record: a:b\n    expr: sum(rate(x[5m]))\n  - alert: A\n    expr: up == 0\n    for: 1m\n    labels: {s: '{{ $value }}'}\n    annotations: {d: '{{ with query \"up\" }}{{ . | first | value | humanize }}{{ end }}'}\n",
    "{{ range $k, $v := $labels }}{{ $k }}={{ $v | toUpper }}{{ end }}{{ if gt $value 1.0 }}x{{ else if lt $value 0.5 }}y{{ else }}z{{ end }}",
    "{{ printf \"%-10s|%08.3f|%x|%q\" $labels.job $value 255 \"a\" }}{{ humanizeDuration 3600 }}{{ humanizePercentage 0.5 }}",
    "1+2x10 _ stale -3-1x5 _x3 Inf NaN 0x1f",
    "up{job=\"a\",instance=\"b\"}",
    "{{ printf \"%99999999999999999999999999d%.99999999f\" 1 2.0 }}1x999999 1x999999 _x999999",
];

fn mutate(rng: &mut StdRng, s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    for _ in 0..rng.random_range(1..8) {
        if v.is_empty() {
            v.push(rng.random());
            continue;
        }
        let i = rng.random_range(0..v.len());
        match rng.random_range(0..4) {
            0 => v[i] = rng.random(),
            1 => {
                v.remove(i);
            }
            2 => {
                let alphabet = b"{}$|.\"-x_ \n:";
                v.insert(i, alphabet[rng.random_range(0..alphabet.len())]);
            }
            _ => {
                let j = rng.random_range(i..v.len());
                let chunk = v[i..j].to_vec();
                v.splice(i..i, chunk);
            }
        }
    }
    v
}

#[test]
fn random_and_mutated_inputs_never_panic() {
    let mut rng = StdRng::seed_from_u64(0x7d_5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..200);
        let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        fuzzing::rule_file(&bytes);
        fuzzing::template(&bytes);
        fuzzing::test_values(&bytes);
    }
    for seed in SEEDS {
        for _ in 0..3000 {
            let m = mutate(&mut rng, seed.as_bytes());
            fuzzing::rule_file(&m);
            fuzzing::template(&m);
            fuzzing::test_values(&m);
        }
    }
}
