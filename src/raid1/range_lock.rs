//! Orders overlapping requests: a write waits for every earlier request whose
//! range overlaps its own, so overlapping writes reach every leg in the order
//! they arrived and the legs never diverge. Requests that do not overlap never
//! wait for each other. (md leaves this to `serialize_policy`; mdfuse always
//! does it: the table is a short list, scanned under one mutex.)

use parking_lot::{Condvar, Mutex};

#[derive(Debug)]
struct Held {
    start: u64,
    end: u64,
    ticket: u64,
}

#[derive(Debug, Default)]
struct Table {
    held: Vec<Held>,
    next_ticket: u64,
}

#[derive(Debug, Default)]
pub struct RangeLock {
    table: Mutex<Table>,
    released: Condvar,
}

/// Held while a request owns `[start, end)`; releases it on drop.
#[must_use]
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    ticket: u64,
}

impl RangeLock {
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes `[start, end)`, waiting behind every earlier overlapping holder
    /// or waiter (first come, first served).
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        debug_assert!(start < end);
        let mut table = self.table.lock();
        let ticket = table.next_ticket;
        table.next_ticket += 1;
        table.held.push(Held { start, end, ticket });
        while table
            .held
            .iter()
            .any(|h| h.ticket < ticket && h.start < end && start < h.end)
        {
            self.released.wait(&mut table);
        }
        RangeGuard { lock: self, ticket }
    }

    /// Takes several ranges as one request (one place in the queue, so
    /// a request overlapping two of them cannot come between and deadlock),
    /// waiting behind every earlier request overlapping any of them.
    pub fn lock_many(&self, ranges: &[(u64, u64)]) -> RangeGuard<'_> {
        let mut table = self.table.lock();
        let ticket = table.next_ticket;
        table.next_ticket += 1;
        for &(start, end) in ranges {
            debug_assert!(start < end);
            table.held.push(Held { start, end, ticket });
        }
        while table.held.iter().any(|h| {
            h.ticket < ticket
                && ranges
                    .iter()
                    .any(|&(start, end)| h.start < end && start < h.end)
        }) {
            self.released.wait(&mut table);
        }
        RangeGuard { lock: self, ticket }
    }

    /// Takes `[start, end)` only if no request holds or waits for a range
    /// overlapping it; never waits (so it never holds back the requests
    /// that would queue behind it).
    pub fn try_lock(&self, start: u64, end: u64) -> Option<RangeGuard<'_>> {
        debug_assert!(start < end);
        let mut table = self.table.lock();
        if table.held.iter().any(|h| h.start < end && start < h.end) {
            return None;
        }
        let ticket = table.next_ticket;
        table.next_ticket += 1;
        table.held.push(Held { start, end, ticket });
        Some(RangeGuard { lock: self, ticket })
    }

    /// Number of ranges held or waited for (for tests and status).
    pub fn in_flight(&self) -> usize {
        self.table.lock().held.len()
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut table = self.lock.table.lock();
        let ticket = self.ticket;
        table.held.retain(|h| h.ticket != ticket);
        drop(table);
        self.lock.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn disjoint_ranges_do_not_wait() {
        let l = RangeLock::new();
        let _a = l.lock(0, 4096);
        let _b = l.lock(4096, 8192);
        assert_eq!(l.in_flight(), 2);
    }

    #[test]
    fn overlapping_ranges_run_in_arrival_order() {
        let l = Arc::new(RangeLock::new());
        let order = Arc::new(AtomicU64::new(0));
        let first = l.lock(0, 8192);
        let mut handles = Vec::new();
        for i in 0..4u64 {
            let l = l.clone();
            let order = order.clone();
            handles.push(std::thread::spawn(move || {
                // Stagger arrivals so tickets follow i.
                std::thread::sleep(Duration::from_millis(20 * i));
                let _g = l.lock(4096 * (i % 2), 4096 * (i % 2) + 4096);
                let seen = order.fetch_add(1, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(5));
                (i, seen)
            }));
        }
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            order.load(Ordering::SeqCst),
            0,
            "nobody ran while the first held"
        );
        drop(first);
        let mut results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        results.sort();
        // Requests on the same block keep their arrival order.
        let evens: Vec<_> = results
            .iter()
            .filter(|r| r.0 % 2 == 0)
            .map(|r| r.1)
            .collect();
        let odds: Vec<_> = results
            .iter()
            .filter(|r| r.0 % 2 == 1)
            .map(|r| r.1)
            .collect();
        assert!(evens[0] < evens[1]);
        assert!(odds[0] < odds[1]);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn try_lock_never_waits_and_never_overtakes() {
        let lock = RangeLock::new();
        let held = lock.lock(0, 10);
        assert!(lock.try_lock(5, 20).is_none(), "overlaps a held range");
        let other = lock.try_lock(10, 20).expect("disjoint");
        drop(held);
        assert!(lock.try_lock(0, 30).is_none(), "overlaps [10, 20)");
        drop(other);
        assert!(lock.try_lock(0, 30).is_some());
        assert_eq!(lock.in_flight(), 0);
    }

    #[test]
    fn lock_many_is_one_place_in_the_queue() {
        let lock = Arc::new(RangeLock::new());
        let a = lock.lock(0, 10);
        // Waits for [0, 10); a request over both of its ranges queued after
        // it must wait for it (not hold one of them meanwhile).
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let many = {
            let (lock, order) = (lock.clone(), order.clone());
            std::thread::spawn(move || {
                let _g = lock.lock_many(&[(5, 15), (40, 50)]);
                order.lock().push("many");
                std::thread::sleep(Duration::from_millis(20));
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        let spanning = {
            let (lock, order) = (lock.clone(), order.clone());
            std::thread::spawn(move || {
                let _g = lock.lock(12, 45);
                order.lock().push("spanning");
            })
        };
        std::thread::sleep(Duration::from_millis(20));
        assert!(order.lock().is_empty());
        drop(a);
        many.join().unwrap();
        spanning.join().unwrap();
        assert_eq!(*order.lock(), vec!["many", "spanning"]);
        assert_eq!(lock.in_flight(), 0);
        // Disjoint from both ranges: never waits for them.
        let _g = lock.lock_many(&[(0, 5), (20, 30)]);
        let _h = lock.try_lock(5, 20).expect("the gap is free");
    }
}
