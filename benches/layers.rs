//! Layer writing and the compressor, in MB/s of uncompressed input:
//!
//! - `layer/write`: [`vxbuild::layer::write_layer`] over a tree shaped like an installed
//!   scientific Python stack (many small source files, compressible shared libraries, some
//!   incompressible data): walk, tar, gzip, both sha256s, into the cache.
//! - `gzip/vxbuild` vs `gzip/pigz`: the same tar through vxbuild's parallel gzip and through
//!   `pigz -6` on the same cores (`pigz -p N`, N = this machine's cores), level 6 both;
//!   `gzip/vxbuild-zstd` is `--compression zstd` on the same input.
//!
//! `cargo bench --bench layers`; `VXBUILD_BENCH_MB` sets the input size (default 96).

#![allow(clippy::print_stderr)] // a note when pigz is missing

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vxbuild::cache::Cache;
use vxbuild::compress::ParallelWriter;
use vxbuild::layer::{LayerOptions, entries_from_tree, write_layer};

fn size_mb() -> usize {
    std::env::var("VXBUILD_BENCH_MB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

/// xorshift: the same "random" data on every run.
struct Rand(u64);
impl Rand {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// A tree of about `mb` MB: 40% Python-like text in small files, 45% shared-library-like
/// binaries (compress to about half), 15% incompressible.
fn make_tree(root: &Path, mb: usize) -> u64 {
    let mut r = Rand(0x9e37_79b9_7f4a_7c15);
    let words = [
        "def ",
        "return ",
        "self",
        ".data",
        " = ",
        "\n    ",
        "import numpy as np\n",
        "(x, y)",
        "# comment about the algorithm\n",
        "if ",
        "else:\n",
        "for i in range(n):\n",
    ];
    let target = (mb as u64) << 20;
    let mut total = 0u64;
    let mut i = 0;
    while total < target * 40 / 100 {
        let d = root.join(format!("site-packages/pkg{}/sub{}", i % 40, i % 9));
        std::fs::create_dir_all(&d).unwrap();
        let n = 200 + (r.next() % 3000) as usize;
        let text: String = (0..n)
            .map(|_| words[(r.next() % words.len() as u64) as usize])
            .collect();
        total += text.len() as u64;
        std::fs::write(d.join(format!("mod{i}.py")), text).unwrap();
        i += 1;
    }
    let libs = root.join("site-packages/libs");
    std::fs::create_dir_all(&libs).unwrap();
    let mut j = 0;
    while total < target * 85 / 100 {
        let n = 3 << 20;
        let data: Vec<u8> = (0..n)
            .map(|k| {
                if k % 2 == 0 {
                    (r.next() & 0xff) as u8
                } else {
                    (k % 97) as u8
                }
            })
            .collect();
        total += n as u64;
        std::fs::write(libs.join(format!("lib{j}.so")), data).unwrap();
        j += 1;
    }
    let mut data = vec![0u8; (target - total.min(target)) as usize];
    for b in data.iter_mut() {
        *b = (r.next() >> 24) as u8;
    }
    total += data.len() as u64;
    std::fs::write(root.join("site-packages/weights.bin"), data).unwrap();
    total
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn benches(c: &mut Criterion) {
    let mb = size_mb();
    let tmp = tempfile::tempdir().unwrap();
    let tree = tmp.path().join("tree");
    let total = make_tree(&tree, mb);
    let cache_dir = tmp.path().join("cache");
    let cache = Cache::open(&cache_dir).unwrap();

    let mut g = c.benchmark_group("layer");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(total));
    g.bench_function("write", |b| {
        b.iter(|| {
            let entries = entries_from_tree(&tree, "usr/local/lib/python3.9").unwrap();
            let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
            // Each iteration writes the blob again, not a cache hit.
            std::fs::remove_file(cache.blob_path(&blob.digest)).unwrap();
        })
    });
    g.finish();

    // The same bytes for both compressors: the layer's tar.
    let tar_path = tmp.path().join("layer.tar");
    {
        let entries = entries_from_tree(&tree, "usr/local/lib/python3.9").unwrap();
        let blob = write_layer(entries, &LayerOptions::default(), &cache).unwrap();
        let out = std::fs::File::create(&tar_path).unwrap();
        let mut dec = flate2::read::GzDecoder::new(
            std::fs::File::open(cache.blob_path(&blob.digest)).unwrap(),
        );
        std::io::copy(&mut dec, &mut std::io::BufWriter::new(out)).unwrap();
    }
    let tar = std::fs::read(&tar_path).unwrap();
    let mut g = c.benchmark_group("gzip");
    g.sample_size(10);
    g.throughput(Throughput::Bytes(tar.len() as u64));
    g.bench_function("vxbuild", |b| {
        b.iter(|| {
            let mut w = ParallelWriter::new(std::io::sink(), vxbuild::layer::GZIP_LEVEL);
            w.write_all(&tar).unwrap();
            w.finish().unwrap();
        })
    });
    g.bench_function("vxbuild-zstd", |b| {
        b.iter(|| {
            let mut w =
                ParallelWriter::with_codec(std::io::sink(), vxbuild::compress::Codec::Zstd, 0);
            w.write_all(&tar).unwrap();
            w.finish().unwrap();
        })
    });
    if Command::new("pigz").arg("--version").output().is_ok() {
        let threads = cores().to_string();
        g.bench_function("pigz", |b| {
            b.iter(|| {
                let status = Command::new("pigz")
                    .args(["-6", "-c", "-p", &threads])
                    .arg(&tar_path)
                    .stdout(Stdio::null())
                    .status()
                    .unwrap();
                assert!(status.success());
            })
        });
    } else {
        eprintln!("pigz not on PATH: gzip/pigz skipped (apt-get install pigz)");
    }
    g.finish();
}

criterion_group!(layers, benches);
criterion_main!(layers);
