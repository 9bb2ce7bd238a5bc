//! Layer compression on every core, with output that does not depend on how many there are.
//!
//! The input is cut into fixed [`BLOCK_SIZE`] blocks, each compressed on its own:
//! - **gzip** (the default): raw deflate at the pinned level, no dictionary from the block before
//!   (as `pigz --independent` does), ended with a sync flush, so the pieces join into one ordinary
//!   deflate stream; the last block ends the stream. The CRC-32s of the blocks are combined. One
//!   gzip member, readable by every gunzip.
//! - **zstd** (`--compression zstd`): each block is one zstd frame (with its content size); the
//!   frames are concatenated, which the zstd format defines as one stream.
//!
//! The bytes depend only on the input, the block size, the codec and level and the compressor's
//! version (flate2's pure-Rust backend; the zstd crate's bundled libzstd), never on the thread
//! count or the scheduling: blocks are written in input order.
//!
//! Workers are shared by the whole process (one per core), so layers written at the same time
//! share them rather than multiply threads; each writer keeps at most [`IN_FLIGHT`] blocks per
//! worker queued, which bounds memory to a few megabytes per writer.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

use flate2::{Compress, Compression, FlushCompress, Status};

/// Uncompressed bytes per independently compressed block. Part of the output format: changing
/// it changes every layer digest.
pub const BLOCK_SIZE: usize = 1 << 20;
/// Blocks a writer may have queued or in compression, per worker thread.
const IN_FLIGHT: usize = 2;
/// The gzip header: magic, deflate, no flags, mtime 0, no extra flags, OS 255 ("unknown", so the
/// build machine never shows).
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];

/// How layers are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// gzip at [`crate::layer::GZIP_LEVEL`]: every registry and runtime reads it.
    #[default]
    Gzip,
    /// zstd at [`ZSTD_LEVEL`]: faster and smaller; needs containerd ≥ 1.5, podman/CRI-O, or
    /// docker with the containerd image store.
    Zstd,
}

/// The zstd level. Part of the output format.
pub const ZSTD_LEVEL: i32 = 3;

impl Codec {
    pub fn name(self) -> &'static str {
        match self {
            Codec::Gzip => "gzip",
            Codec::Zstd => "zstd",
        }
    }

    pub fn media_type(self) -> &'static str {
        match self {
            Codec::Gzip => crate::oci::OCI_LAYER_GZIP,
            Codec::Zstd => crate::oci::OCI_LAYER_ZSTD,
        }
    }
}

struct Job {
    input: Vec<u8>,
    last: bool,
    codec: Codec,
    level: u32,
    done: mpsc::SyncSender<io::Result<Compressed>>,
}

struct Compressed {
    deflate: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
}

struct Pool {
    jobs: Mutex<mpsc::Sender<Job>>,
    workers: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..workers {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("vx-gzip-{i}"))
                .spawn(move || {
                    loop {
                        let job = match rx.lock().expect("gzip queue").recv() {
                            Ok(j) => j,
                            Err(_) => return,
                        };
                        let out = match job.codec {
                            Codec::Gzip => compress_block(&job.input, job.last, job.level),
                            Codec::Zstd => zstd_block(&job.input),
                        };
                        let _ = job.done.send(out);
                    }
                })
                .expect("start a gzip worker");
        }
        Pool {
            jobs: Mutex::new(tx),
            workers,
        }
    })
}

/// One block as raw deflate: sync-flushed (byte-aligned, not final) unless it is the last. The
/// output buffer has room for the worst case (zlib's compressBound plus the flush marker), so one
/// call does it all; the loop is only a guard.
fn compress_block(input: &[u8], last: bool, level: u32) -> io::Result<Compressed> {
    let mut c = Compress::new(Compression::new(level), false);
    let n = input.len();
    let bound = n + (n >> 12) + (n >> 14) + (n >> 25) + 64;
    let mut out = Vec::with_capacity(bound);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    loop {
        let consumed = c.total_in() as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let spare = out.capacity() - out.len();
        match status {
            Status::StreamEnd => break,
            _ if !last && c.total_in() as usize == n && spare > 0 => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);
    Ok(Compressed {
        deflate: out,
        crc,
        len: n as u64,
    })
}

/// One block as one zstd frame.
fn zstd_block(input: &[u8]) -> io::Result<Compressed> {
    let deflate = zstd::bulk::compress(input, ZSTD_LEVEL)?;
    Ok(Compressed {
        deflate,
        crc: crc32fast::Hasher::new(),
        len: input.len() as u64,
    })
}

/// An encoder writing to `inner` (see the module docs). Call [`ParallelWriter::finish`].
pub struct ParallelWriter<W: Write> {
    inner: W,
    codec: Codec,
    level: u32,
    block: Vec<u8>,
    pending: VecDeque<mpsc::Receiver<io::Result<Compressed>>>,
    crc: crc32fast::Hasher,
    len: u64,
    header_written: bool,
}

impl<W: Write> ParallelWriter<W> {
    /// gzip at `level`.
    pub fn new(inner: W, level: u32) -> Self {
        Self::with_codec(inner, Codec::Gzip, level)
    }

    /// `codec` (`level` is gzip's; zstd uses [`ZSTD_LEVEL`]).
    pub fn with_codec(inner: W, codec: Codec, level: u32) -> Self {
        ParallelWriter {
            inner,
            codec,
            level,
            block: Vec::with_capacity(BLOCK_SIZE),
            pending: VecDeque::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            header_written: false,
        }
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let input = std::mem::replace(
            &mut self.block,
            if last {
                Vec::new()
            } else {
                Vec::with_capacity(BLOCK_SIZE)
            },
        );
        let (done, rx) = mpsc::sync_channel(1);
        let p = pool();
        p.jobs
            .lock()
            .expect("gzip queue")
            .send(Job {
                input,
                last,
                codec: self.codec,
                level: self.level,
                done,
            })
            .map_err(|_| io::Error::other("the gzip workers stopped"))?;
        self.pending.push_back(rx);
        while self.pending.len() > p.workers * IN_FLIGHT {
            self.write_oldest()?;
        }
        Ok(())
    }

    /// Wait for the oldest block and write it: output stays in input order.
    fn write_oldest(&mut self) -> io::Result<()> {
        let Some(rx) = self.pending.pop_front() else {
            return Ok(());
        };
        let c = rx
            .recv()
            .map_err(|_| io::Error::other("a gzip worker stopped"))??;
        if !self.header_written && self.codec == Codec::Gzip {
            self.inner.write_all(&HEADER)?;
        }
        self.header_written = true;
        self.inner.write_all(&c.deflate)?;
        self.crc.combine(&c.crc);
        self.len += c.len;
        Ok(())
    }

    /// Compress what is left, write the trailer, return the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while !self.pending.is_empty() {
            self.write_oldest()?;
        }
        if self.codec == Codec::Zstd {
            self.inner.flush()?;
            return Ok(self.inner);
        }
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        // ISIZE: the length modulo 2^32, as RFC 1952 says.
        self.inner.write_all(&(self.len as u32).to_le_bytes())?;
        self.inner.flush()?;
        Ok(self.inner)
    }
}

impl<W: Write> Write for ParallelWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let room = BLOCK_SIZE - self.block.len();
        let n = room.min(buf.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == BLOCK_SIZE {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut w = ParallelWriter::new(Vec::new(), 6);
        // Odd write sizes: block boundaries must not depend on them.
        for chunk in data.chunks(777_777) {
            w.write_all(chunk).unwrap();
        }
        w.finish().unwrap()
    }

    fn sample(len: usize) -> Vec<u8> {
        // Compressible but not trivial: text-like with a slow pseudo-random walk.
        let mut x: u32 = 1;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                if i % 7 == 0 {
                    b' '
                } else {
                    b'a' + ((x >> 16) % 20) as u8
                }
            })
            .collect()
    }

    #[test]
    fn round_trips_through_a_standard_gunzip_as_one_member() {
        for len in [
            0,
            1,
            BLOCK_SIZE - 1,
            BLOCK_SIZE,
            BLOCK_SIZE + 1,
            3 * BLOCK_SIZE + 12345,
        ] {
            let data = sample(len);
            let out = gz(&data);
            assert_eq!(&out[..10], &HEADER);
            // GzDecoder reads exactly one member: the whole input must be in it.
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&out[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "length {len}");
        }
    }

    #[test]
    fn output_is_the_same_however_it_is_written() {
        let data = sample(2 * BLOCK_SIZE + 99);
        let a = gz(&data);
        let mut w = ParallelWriter::new(Vec::new(), 6);
        for chunk in data.chunks(4096) {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(a, w.finish().unwrap());
        // And it compresses: 20 letters and spaces take well under 8 bits each.
        assert!(a.len() < data.len() * 3 / 4, "{}", a.len());
    }

    #[test]
    fn zstd_frames_join_into_one_stream() {
        let data = sample(2 * BLOCK_SIZE + 7);
        let mut w = ParallelWriter::with_codec(Vec::new(), Codec::Zstd, 0);
        w.write_all(&data).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(&out[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let back = zstd::stream::decode_all(&out[..]).unwrap();
        assert_eq!(back, data);
        assert!(out.len() < data.len() * 3 / 4, "{}", out.len());
    }

    #[test]
    fn gunzip_cli_agrees() {
        let data = sample(BLOCK_SIZE + 5);
        let out = gz(&data);
        let mut child = std::process::Command::new("gzip")
            .args(["-d", "-c"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(&out));
        let result = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(result.status.success());
        assert_eq!(result.stdout, data);
    }
}
