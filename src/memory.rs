//! Hands freed heap memory back to the operating system from time to time. glibc's allocator
//! keeps what the gateway frees inside its heaps: with event streams coming and going, freed
//! blocks end up between live ones and resident memory creeps up for many minutes although the
//! live heap stays flat (measured in the soak test). `malloc_trim` releases every free page,
//! wherever it sits in the heap; the pages come back on demand (a page fault each).

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::time::Duration;

pub struct Trimmer {
    pub interval: Duration,
}

/// Releases free heap pages now; true when the allocator could give any back.
pub fn trim() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim only reorganises the allocator's own free lists; it is
        // thread-safe (it takes each arena's lock) and has no preconditions.
        unsafe { libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[async_trait]
impl BackgroundService for Trimmer {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if self.interval.is_zero() {
            return;
        }
        let mut tick = tokio::time::interval(self.interval);
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    // It walks the free lists under the allocator's locks: off the async threads.
                    let _ = tokio::task::spawn_blocking(trim).await;
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    fn resident_bytes() -> usize {
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        let pages: usize = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        pages * 4096
    }

    #[test]
    fn trimming_gives_back_the_holes_free_leaves_in_the_heap() {
        // 80 MB of 4 KiB blocks (below the mmap threshold, so inside the heap), then all but
        // every tenth freed: the holes sit between live blocks, where free() cannot return them.
        let mut blocks: Vec<Vec<u8>> = (0..20_000).map(|_| vec![1u8; 4096]).collect();
        let mut i = 0;
        blocks.retain(|_| {
            i += 1;
            i % 10 == 0
        });
        let before = resident_bytes();
        assert!(super::trim());
        let after = resident_bytes();
        assert!(
            before.saturating_sub(after) > 30 << 20,
            "resident {before} -> {after} bytes"
        );
        drop(blocks);
    }
}
