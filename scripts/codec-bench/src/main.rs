//! Codec measurement for HarmonyLite frames: telemetry rows batched as the node batches them.
#[path = "../../../src/frame.rs"]
#[allow(dead_code)]
mod frame;

use frame::{FrameBuilder, Op, Pushed, TableHeader, Value};
use std::time::Instant;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

const FIELDS: [(&str, f64, f64, u32); 10] = [
    ("temperature", 21.5, 0.05, 2),
    ("humidity", 48.0, 0.2, 1),
    ("pressure", 1013.2, 0.1, 1),
    ("voltage", 229.8, 0.3, 1),
    ("current", 3.42, 0.02, 3),
    ("co2", 612.0, 2.0, 0),
    ("pm25", 12.4, 0.3, 1),
    ("lux", 340.0, 5.0, 0),
    ("battery", 87.0, 0.01, 2),
    ("rssi", -67.0, 1.0, 0),
];

fn header() -> TableHeader {
    TableHeader {
        name: "readings".into(),
        columns: vec!["id".into(), "device".into(), "ts".into(), "payload".into()],
        pk: vec![0],
    }
}

/// `n` readings from 8 devices, one per device per second, values drifting (random walk).
fn rows(n: usize) -> Vec<Vec<Value>> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut state: Vec<Vec<f64>> = (0..8)
        .map(|_| FIELDS.iter().map(|f| f.1).collect())
        .collect();
    let mut out = Vec::with_capacity(n);
    let t0: i64 = 1_764_500_000_000;
    for i in 0..n {
        let d = i % 8;
        let mut json = String::from("{");
        for (k, f) in FIELDS.iter().enumerate() {
            state[d][k] += (rng.unit() - 0.5) * 2.0 * f.2;
            if k > 0 {
                json.push(',');
            }
            json.push_str(&format!("\"{}\":{:.*}", f.0, f.3 as usize, state[d][k]));
        }
        json.push('}');
        out.push(vec![
            Value::Integer(i as i64 + 1),
            Value::Text(format!("gw-0017-sensor-{d:02}").into_bytes()),
            Value::Integer(t0 + (i / 8) as i64 * 1000 + (rng.next() % 40) as i64),
            Value::Text(json.into_bytes()),
        ]);
    }
    out
}

/// Frames as the node builds them: rows of one table, bounded by max_frame.
fn frames(rows: &[Vec<Value>], per_frame: usize, max_frame: usize) -> Vec<Vec<u8>> {
    let h = header();
    let mut out = Vec::new();
    let mut b = FrameBuilder::new(17, max_frame);
    let mut version = 1u64 << 20;
    for (i, r) in rows.iter().enumerate() {
        version += 1 + (i as u64 % 3);
        if b.len() == per_frame {
            out.push(b.finish());
        }
        match b.push(&h, version, Op::Upsert(r.clone())) {
            Pushed::Added => {}
            Pushed::Full => {
                out.push(b.finish());
                assert_eq!(b.push(&h, version, Op::Upsert(r.clone())), Pushed::Added);
            }
            Pushed::TooLarge => panic!(),
        }
    }
    if !b.is_empty() {
        out.push(b.finish());
    }
    out
}

type Comp = fn(&[u8]) -> Vec<u8>;
type Decomp = fn(&[u8], usize) -> Vec<u8>;

fn codecs() -> Vec<(&'static str, Comp, Decomp)> {
    vec![
        (
            "lz4_flex block",
            |b| lz4_flex::block::compress(b),
            |c, n| lz4_flex::block::decompress(c, n).unwrap(),
        ),
        (
            "miniz_oxide deflate l1",
            |b| miniz_oxide::deflate::compress_to_vec(b, 1),
            |c, _| miniz_oxide::inflate::decompress_to_vec(c).unwrap(),
        ),
        (
            "miniz_oxide deflate l3",
            |b| miniz_oxide::deflate::compress_to_vec(b, 3),
            |c, _| miniz_oxide::inflate::decompress_to_vec(c).unwrap(),
        ),
        (
            "miniz_oxide deflate l6",
            |b| miniz_oxide::deflate::compress_to_vec(b, 6),
            |c, _| miniz_oxide::inflate::decompress_to_vec(c).unwrap(),
        ),
        (
            "miniz_oxide deflate l9",
            |b| miniz_oxide::deflate::compress_to_vec(b, 9),
            |c, _| miniz_oxide::inflate::decompress_to_vec(c).unwrap(),
        ),
        (
            "zstd l1",
            |b| zstd::bulk::compress(b, 1).unwrap(),
            |c, n| zstd::bulk::decompress(c, n).unwrap(),
        ),
        (
            "zstd l3",
            |b| zstd::bulk::compress(b, 3).unwrap(),
            |c, n| zstd::bulk::decompress(c, n).unwrap(),
        ),
    ]
}

fn main() {
    let all = rows(20_000);
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "ir" {
        // for valgrind: build frames, then compress (c) or compress+decompress (cd) once
        let per: usize = args[3].parse().unwrap();
        let n = if per == 1 { 2000 } else { all.len() };
        let fs = frames(&all[..n], per, 262_144);
        let raw: usize = fs.iter().map(|f| f.len()).sum();
        let name = &args[2];
        let mut out = 0usize;
        for (cname, c, d) in codecs() {
            if cname == name {
                for f in &fs {
                    let b = &f[3..f.len() - 4];
                    let x = c(b);
                    out += d(&x, b.len()).len() + x.len();
                }
            }
        }
        eprintln!("raw={raw} n={n} out={out}");
        return;
    }
    println!(
        "row: {:?}",
        String::from_utf8_lossy(match &all[0][3] {
            Value::Text(t) => t,
            _ => unreachable!(),
        })
    );
    let cases: [(&str, usize, usize); 5] = [
        ("1 row/frame", 1, 262_144),
        ("10 rows/frame", 10, 262_144),
        ("100 rows/frame", 100, 262_144),
        ("1000 rows/frame", 1000, 262_144),
        ("full 256 KiB frames", usize::MAX, 262_144),
    ];
    println!("| frames | codec | raw B/row | compressed B/row | ratio | compress MB/s | decompress MB/s |");
    println!("|---|---|---|---|---|---|---|");
    for (name, per, max) in cases {
        let n = if per == 1 { 2000 } else { all.len() };
        let fs = frames(&all[..n], per, max);
        let raw: usize = fs.iter().map(|f| f.len()).sum();
        let shipped: usize = fs.iter().map(|f| frame::compress(f.clone()).len()).sum();
        let t = Instant::now();
        for f in &fs {
            let c = frame::compress(f.clone());
            frame::decode(&c).unwrap();
        }
        let ship_t = t.elapsed().as_secs_f64();
        println!(
            "| {name} ({} frames) | none | {:.1} | | | | |",
            fs.len(),
            raw as f64 / n as f64
        );
        println!("| | **frame::compress as shipped** | | {:.1} | {:.1}% | {:.1} µs/row compress+decode | |", shipped as f64 / n as f64, 100.0 * shipped as f64 / raw as f64, ship_t * 1e6 / n as f64);
        for (cname, c, d) in codecs() {
            // body only: what follows magic+version and precedes the CRC
            let bodies: Vec<&[u8]> = fs.iter().map(|f| &f[3..f.len() - 4]).collect();
            let mut best_c = f64::MAX;
            let mut best_d = f64::MAX;
            let mut comp: Vec<Vec<u8>> = Vec::new();
            for _ in 0..15 {
                let t = Instant::now();
                comp = bodies.iter().map(|b| c(b)).collect();
                best_c = best_c.min(t.elapsed().as_secs_f64());
                let t = Instant::now();
                for (x, b) in comp.iter().zip(&bodies) {
                    let back = d(x, b.len());
                    assert_eq!(back.len(), b.len());
                }
                best_d = best_d.min(t.elapsed().as_secs_f64());
            }
            // a frame that does not shrink is sent raw; compressed adds a 1-4 B length varint
            let sent: usize = comp
                .iter()
                .zip(&bodies)
                .map(|(x, b)| {
                    7 + if x.len() + 4 < b.len() {
                        x.len() + 4
                    } else {
                        b.len()
                    }
                })
                .sum();
            let mb = raw as f64 / 1e6;
            println!(
                "| | {cname} | | {:.1} | {:.1}% | {:.0} | {:.0} |",
                sent as f64 / n as f64,
                100.0 * sent as f64 / raw as f64,
                mb / best_c,
                mb / best_d
            );
        }
    }
}
