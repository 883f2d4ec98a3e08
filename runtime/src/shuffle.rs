//! The shuffle of a map-reduce job, on the worker's side.
//!
//! A map task's records are cut by a stable hash of their key into one
//! partition per reducer. When the records held pass the shuffle buffer,
//! they are sorted by (partition, key) and written out as one sorted run
//! per partition (a *spill*), so a map's memory never grows with its
//! output. The worker stores each run in the blob store (content-addressed)
//! and the map's output is a [`MapOutput`]: per partition, the runs' refs.
//!
//! A reduce task reads a [`ReduceInput`] (the runs of its partition, from
//! every map in map order), copies each run to a local file, and merges
//! them k ways as it feeds the guest ([`merge_groups`]): a key's values
//! stream from the files, in map order and, within a map, in emission
//! order, so memory does not grow with the partition's size either.
//!
//! A run is a sequence of frames (`u32` little-endian length, then bytes),
//! key then value, sorted by key: the same framing guests use.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::message::BlobRef;
use crate::records::Records;
use crate::sandbox::Group;

/// Memory a map's records may take (bytes, with their index) before they
/// are spilled as sorted runs, by default.
pub const DEFAULT_SHUFFLE_BUFFER: u64 = 32 << 20;

/// Smallest shuffle buffer a job may set.
pub const MIN_SHUFFLE_BUFFER: u64 = 64 << 10;

/// Most reducers (partitions) a job may have.
pub const MAX_REDUCERS: u32 = 10_000;

/// The partition of a key: FNV-1a (64 bits) of its bytes, modulo the
/// number of partitions. Stable across processes, machines and versions.
pub fn partition(key: &[u8], partitions: u32) -> u32 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (hash % u64::from(partitions.max(1))) as u32
}

/// A map task's output in a map-reduce job: for each partition (reducer),
/// its sorted runs in the blob store, in spill order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapOutput {
    /// One list per partition.
    pub partitions: Vec<Vec<BlobRef>>,
    /// Records the map emitted (after combining), for the job's counters.
    pub records: u64,
}

/// A reduce task's input: the sorted runs of its partition, every map's in
/// map order.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReduceInput {
    /// Which partition.
    pub partition: u32,
    /// Its runs.
    pub runs: Vec<BlobRef>,
}

/// One sorted run of one partition, in a local file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunFile {
    /// The partition.
    pub partition: u32,
    /// Where it is.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
}

/// Writes a map's records as sorted runs per partition, a spill at a time.
#[derive(Debug)]
pub struct Spiller {
    partitions: u32,
    dir: PathBuf,
    runs: Vec<RunFile>,
    spills: u32,
    records: u64,
}

fn write_frame(out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    let len = u32::try_from(bytes.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "a frame above 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(bytes)
}

impl Spiller {
    /// Spills into `dir` (which must exist), cutting into `partitions`.
    pub fn new(partitions: u32, dir: impl Into<PathBuf>) -> Self {
        Spiller {
            partitions: partitions.max(1),
            dir: dir.into(),
            runs: Vec::new(),
            spills: 0,
            records: 0,
        }
    }

    /// How many spills were written.
    pub fn spills(&self) -> u32 {
        self.spills
    }

    /// Sorts `records` by (partition, key) and writes one run per
    /// non-empty partition; leaves `records` empty.
    pub fn spill(&mut self, records: &mut Records) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let partitions = self.partitions;
        let order = records.sorted_by_partition(|key| partition(key, partitions));
        let mut current: Option<(u32, BufWriter<File>, PathBuf, u64)> = None;
        for (part, key, value) in order {
            if current.as_ref().map(|c| c.0) != Some(part) {
                if let Some(done) = current.take() {
                    self.close(done)?;
                }
                let path = self
                    .dir
                    .join(format!("spill-{:05}-part-{part:05}", self.spills));
                let file = BufWriter::with_capacity(256 << 10, File::create(&path)?);
                current = Some((part, file, path, 0));
            }
            if let Some((_, file, _, bytes)) = current.as_mut() {
                write_frame(file, key)?;
                write_frame(file, value)?;
                *bytes += 8 + key.len() as u64 + value.len() as u64;
            }
            self.records += 1;
        }
        if let Some(done) = current.take() {
            self.close(done)?;
        }
        self.spills += 1;
        *records = Records::new();
        Ok(())
    }

    fn close(
        &mut self,
        (partition, file, path, bytes): (u32, BufWriter<File>, PathBuf, u64),
    ) -> io::Result<()> {
        file.into_inner()
            .map_err(|e| e.into_error())?
            .sync_data()
            .ok();
        self.runs.push(RunFile {
            partition,
            path,
            bytes,
        });
        Ok(())
    }

    /// The runs written, in spill order, and the records they hold.
    pub fn finish(self) -> (Vec<RunFile>, u64) {
        (self.runs, self.records)
    }
}

/// Reads a run's records in order.
pub struct RunReader {
    input: BufReader<File>,
    left: u64,
}

impl RunReader {
    /// Opens a run file.
    pub fn open(path: &Path) -> io::Result<RunReader> {
        let file = File::open(path)?;
        let left = file.metadata()?.len();
        Ok(RunReader {
            input: BufReader::with_capacity(64 << 10, file),
            left,
        })
    }

    fn frame(&mut self) -> io::Result<Vec<u8>> {
        let mut header = [0u8; 4];
        self.input.read_exact(&mut header)?;
        let len = u64::from(u32::from_le_bytes(header));
        self.left = self.left.saturating_sub(4);
        if len > self.left {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "a run's frame runs past its end",
            ));
        }
        let mut bytes = vec![0u8; len as usize];
        self.input.read_exact(&mut bytes)?;
        self.left -= len;
        Ok(bytes)
    }

    /// The next record, or `None` at the end.
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        if self.left == 0 {
            return Ok(None);
        }
        let key = self.frame()?;
        let value = self.frame()?;
        Ok(Some((key, value)))
    }
}

/// A k-way merge of sorted runs: records in key order; among equal keys,
/// runs in the order given, each run's in its own order.
pub struct Merge {
    readers: Vec<RunReader>,
    heap: BinaryHeap<Reverse<Head>>,
}

/// A run's next record in the merge: key, the run's index (ties go to
/// the earlier run), value.
type Head = (Vec<u8>, usize, Vec<u8>);

impl Merge {
    /// Opens every run and reads its first record.
    pub fn open(paths: &[PathBuf]) -> io::Result<Merge> {
        let mut merge = Merge {
            readers: Vec::with_capacity(paths.len()),
            heap: BinaryHeap::with_capacity(paths.len()),
        };
        for path in paths {
            merge.readers.push(RunReader::open(path)?);
            merge.refill(merge.readers.len() - 1)?;
        }
        Ok(merge)
    }

    fn refill(&mut self, run: usize) -> io::Result<()> {
        if let Some((key, value)) = self.readers[run].next_record()? {
            self.heap.push(Reverse((key, run, value)));
        }
        Ok(())
    }

    /// The next record in merge order.
    pub fn next_record(&mut self) -> io::Result<Option<(Vec<u8>, Vec<u8>)>> {
        let Some(Reverse((key, run, value))) = self.heap.pop() else {
            return Ok(None);
        };
        self.refill(run)?;
        Ok(Some((key, value)))
    }
}

struct Grouping {
    merge: Merge,
    peeked: Option<(Vec<u8>, Vec<u8>)>,
    current: Option<Vec<u8>>,
    error: Option<io::Error>,
}

impl Grouping {
    fn peek(&mut self) -> Option<&(Vec<u8>, Vec<u8>)> {
        if self.peeked.is_none() && self.error.is_none() {
            match self.merge.next_record() {
                Ok(next) => self.peeked = next,
                Err(error) => self.error = Some(error),
            }
        }
        self.peeked.as_ref()
    }

    /// The next value of the current key, if any is left.
    fn next_value(&mut self) -> Option<Vec<u8>> {
        let current = self.current.clone()?;
        match self.peek() {
            Some((key, _)) if *key == current => self.peeked.take().map(|(_, value)| value),
            _ => None,
        }
    }
}

/// Where a merge's read error (a run file gone bad) is kept, to be checked
/// once the guest is done.
#[derive(Clone)]
pub struct MergeErrors(Arc<Mutex<Grouping>>);

impl MergeErrors {
    /// The first read error of the merge, if there was one.
    pub fn take(&self) -> Option<io::Error> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .error
            .take()
    }
}

/// Keys in order with their values, streamed from a k-way merge: the input
/// of a reduce. A read error ends the stream early and is kept in the
/// returned [`MergeErrors`].
pub fn merge_groups(merge: Merge) -> (Box<dyn Iterator<Item = Group> + Send>, MergeErrors) {
    let shared = Arc::new(Mutex::new(Grouping {
        merge,
        peeked: None,
        current: None,
        error: None,
    }));
    let errors = MergeErrors(shared.clone());
    let groups = std::iter::from_fn(move || {
        let mut grouping = shared.lock().unwrap_or_else(|e| e.into_inner());
        // Skip what the guest left unread of the last key.
        while grouping.next_value().is_some() {}
        let key = grouping.peek()?.0.clone();
        grouping.current = Some(key.clone());
        drop(grouping);
        let values = Values(shared.clone());
        Some((
            key,
            Box::new(values) as Box<dyn Iterator<Item = Vec<u8>> + Send>,
        ))
    });
    (Box::new(groups), errors)
}

struct Values(Arc<Mutex<Grouping>>);

impl Iterator for Values {
    type Item = Vec<u8>;

    fn next(&mut self) -> Option<Vec<u8>> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .next_value()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn partitions_are_stable_and_spread() {
        // FNV-1a of "" is the offset basis.
        assert_eq!(partition(b"", 1), 0);
        assert_eq!(partition(b"word", 7), partition(b"word", 7));
        let mut seen = [0u32; 4];
        for i in 0..1000 {
            seen[partition(format!("key{i}").as_bytes(), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 150), "{seen:?}");
    }

    #[test]
    fn spills_merge_back_into_groups_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut spiller = Spiller::new(2, dir.path());
        let mut records = Records::new();
        for (k, v) in [("b", "1"), ("a", "2"), ("b", "3")] {
            records.push(k.as_bytes(), v.as_bytes());
        }
        spiller.spill(&mut records).unwrap();
        assert!(records.is_empty());
        for (k, v) in [("a", "4"), ("c", "5"), ("b", "6")] {
            records.push(k.as_bytes(), v.as_bytes());
        }
        spiller.spill(&mut records).unwrap();
        let (runs, n) = spiller.finish();
        assert_eq!(n, 6);
        let mut all = Vec::new();
        for part in 0..2 {
            let paths: Vec<PathBuf> = runs
                .iter()
                .filter(|r| r.partition == part)
                .map(|r| r.path.clone())
                .collect();
            let (groups, errors) = merge_groups(Merge::open(&paths).unwrap());
            for (key, values) in groups {
                assert_eq!(partition(&key, 2), part);
                let values: Vec<String> = values.map(|v| String::from_utf8(v).unwrap()).collect();
                all.push((String::from_utf8(key).unwrap(), values));
            }
            assert!(errors.take().is_none());
        }
        all.sort();
        let want = vec![
            ("a".to_owned(), vec!["2".to_owned(), "4".to_owned()]),
            (
                "b".to_owned(),
                vec!["1".to_owned(), "3".to_owned(), "6".to_owned()],
            ),
            ("c".to_owned(), vec!["5".to_owned()]),
        ];
        assert_eq!(all, want);
    }

    #[test]
    fn unread_values_are_skipped_and_a_cut_run_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut spiller = Spiller::new(1, dir.path());
        let mut records = Records::new();
        for (k, v) in [("a", "1"), ("a", "2"), ("b", "3")] {
            records.push(k.as_bytes(), v.as_bytes());
        }
        spiller.spill(&mut records).unwrap();
        let (runs, _) = spiller.finish();
        let paths = vec![runs[0].path.clone()];
        let (groups, _) = merge_groups(Merge::open(&paths).unwrap());
        let keys: Vec<Vec<u8>> = groups.map(|(k, _)| k).collect();
        assert_eq!(keys, vec![b"a".to_vec(), b"b".to_vec()]);
        // Cut the file in the middle of a frame.
        let bytes = std::fs::read(&paths[0]).unwrap();
        std::fs::write(&paths[0], &bytes[..bytes.len() - 2]).unwrap();
        let merge = Merge::open(&paths).unwrap();
        let (groups, errors) = merge_groups(merge);
        let n = groups.count();
        assert!(n < 2);
        assert!(errors.take().is_some());
    }
}
