//! The bounded store-and-forward buffer a device keeps while it cannot send
//! (disconnected, or paused by `RATE_LIMITED`): readings keep being generated, the
//! oldest are dropped once the buffer is full, and everything left is flushed in
//! order on reconnect. Also the bounded set of notification ids a device has seen.

use std::collections::VecDeque;

/// A FIFO of at most `capacity` items that drops its oldest item to make room.
#[derive(Debug)]
pub struct Backlog<T> {
    items: VecDeque<T>,
    capacity: usize,
    /// Items dropped to make room since creation.
    dropped: u64,
}

impl<T> Backlog<T> {
    /// A backlog holding at most `capacity` items (at least one).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.max(1);
        Backlog {
            // Grows on demand: an always-connected device never pays for the capacity.
            items: VecDeque::new(),
            capacity,
            dropped: 0,
        }
    }

    /// Appends `item`; when full, the oldest item is dropped first. Returns whether one
    /// was dropped.
    pub fn push(&mut self, item: T) -> bool {
        let dropped = if self.items.len() >= self.capacity {
            self.items.pop_front();
            self.dropped += 1;
            true
        } else {
            false
        };
        self.items.push_back(item);
        dropped
    }

    /// The oldest item, still in the backlog (send it, then [`Backlog::pop`]).
    pub fn front(&self) -> Option<&T> {
        self.items.front()
    }

    /// Removes and returns the oldest item.
    pub fn pop(&mut self) -> Option<T> {
        self.items.pop_front()
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Items dropped to make room, in total.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Notification ids a device remembers for de-duplication; older ones are
/// forgotten first (a hub redelivers only until expiry, so this is generous).
const SEEN_IDS: usize = 4096;

/// A bounded set of recently seen notification ids.
#[derive(Default)]
pub(crate) struct Seen {
    ids: std::collections::HashSet<String>,
    order: std::collections::VecDeque<String>,
}

impl Seen {
    /// True the first time an id is offered.
    pub(crate) fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == SEEN_IDS {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_owned());
        self.order.push_back(id.to_owned());
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_order_below_capacity() {
        let mut b = Backlog::new(3);
        assert!(b.is_empty());
        assert!(!b.push(1));
        assert!(!b.push(2));
        assert_eq!(b.front(), Some(&1));
        assert_eq!(b.pop(), Some(1));
        assert_eq!(b.pop(), Some(2));
        assert_eq!(b.pop(), None);
        assert_eq!(b.dropped(), 0);
    }

    #[test]
    fn drops_oldest_when_full() {
        let mut b = Backlog::new(3);
        for i in 0..10 {
            b.push(i);
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped(), 7);
        let rest: Vec<_> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(rest, [7, 8, 9]);
    }

    #[test]
    fn zero_capacity_holds_one() {
        let mut b = Backlog::new(0);
        assert_eq!(b.capacity(), 1);
        assert!(!b.push("a"));
        assert!(b.push("b"));
        assert_eq!(b.pop(), Some("b"));
    }
}
