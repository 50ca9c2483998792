//! Acknowledged writes survive a power cut: the store is run on a redb backend that,
//! like a disk with a volatile cache, keeps only what was written before the last sync.

use std::sync::{Arc, Mutex};

use kvorum_protocol::{Epoch, Key, KeyspaceName, NodeId, PartitionId, Record, Version};
use kvorum_storage::store::{Store, WriteOp};
use redb::StorageBackend;

/// A disk whose unsynced writes are lost when the power goes.
#[derive(Debug, Default)]
struct VolatileCacheDisk {
    /// What the platters hold: the state as of the last `sync_data`.
    durable: Arc<Mutex<Vec<u8>>>,
    /// What the operating system shows, synced or not.
    cached: Mutex<Vec<u8>>,
}

impl VolatileCacheDisk {
    /// The disk as it comes back after a power cut: only what was synced.
    fn after_power_cut(&self) -> Self {
        let durable = self.durable.lock().expect("lock").clone();
        Self {
            durable: Arc::new(Mutex::new(durable.clone())),
            cached: Mutex::new(durable),
        }
    }
}

impl StorageBackend for VolatileCacheDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.cached.lock().expect("lock").len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let cached = self.cached.lock().expect("lock");
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        let bytes = cached
            .get(start..start + out.len())
            .ok_or_else(|| std::io::Error::other("read past the end"))?;
        out.copy_from_slice(bytes);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(std::io::Error::other)?;
        self.cached.lock().expect("lock").resize(len, 0);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let cached = self.cached.lock().expect("lock").clone();
        *self.durable.lock().expect("lock") = cached;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let mut cached = self.cached.lock().expect("lock");
        let start = usize::try_from(offset).map_err(std::io::Error::other)?;
        if cached.len() < start + data.len() {
            cached.resize(start + data.len(), 0);
        }
        cached[start..start + data.len()].copy_from_slice(data);
        Ok(())
    }
}

/// Lets the test keep a handle on the disk while redb owns the backend.
#[derive(Debug, Clone)]
struct SharedDisk(Arc<VolatileCacheDisk>);

impl StorageBackend for SharedDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), std::io::Error> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        self.0.write(offset, data)
    }
}

fn commit(key: &str, value: &str) -> WriteOp {
    WriteOp::Commit {
        partition: PartitionId(1),
        epoch: Some(Epoch(1)),
        keyspace: KeyspaceName::default_keyspace(),
        key: Key::parse(key).expect("key"),
        record: Record {
            version: Version {
                counter: 1,
                writer: 1,
            },
            value: Some(value.as_bytes().to_vec()),
        },
    }
}

#[test]
fn every_applied_write_survives_a_power_cut() {
    let disk = SharedDisk(Arc::new(VolatileCacheDisk::default()));
    let store = Store::open_with_backend(disk.clone(), NodeId(1)).expect("open");
    for i in 0..20 {
        // `apply` returning is what a commit's acknowledgement waits for.
        store
            .apply(&[commit(&format!("k{i}"), &format!("v{i}"))])
            .expect("apply");
    }
    // The power goes out the moment the last acknowledgement was sent.
    let after = disk.0.after_power_cut();
    drop(store);

    let store = Store::open_with_backend(after, NodeId(1)).expect("reopen after the power cut");
    let export = store.export_partition(PartitionId(1)).expect("export");
    assert_eq!(
        export.records.len(),
        20,
        "acknowledged writes were lost with the disk cache"
    );
}
