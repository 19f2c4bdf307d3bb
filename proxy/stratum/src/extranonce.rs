//! Splitting one upstream extranonce2 space among many miners (aggregate mode).
//!
//! Each miner gets a unique prefix of `size` bytes: the miner's extranonce1 is that prefix and
//! its extranonce2 is what remains of the upstream extranonce2. Fresh prefixes are handed out
//! before released ones are reused, so a prefix returns to service as late as possible; a
//! miner resuming its session (cpuminer sends its old session id) gets its old prefix back
//! when it is free.

use std::collections::{HashSet, VecDeque};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExtranonceError {
    #[error("extranonce prefix size must be 1 to 4 bytes, got {0}")]
    BadSize(usize),
    #[error("all {0} extranonce prefixes are in use")]
    Exhausted(u64),
}

#[derive(Debug)]
pub struct ExtranonceAllocator {
    size: usize,
    capacity: u64,
    next_fresh: u64,
    released: VecDeque<u32>,
    in_use: HashSet<u32>,
}

impl ExtranonceAllocator {
    pub fn new(size: usize) -> Result<Self, ExtranonceError> {
        if !(1..=4).contains(&size) {
            return Err(ExtranonceError::BadSize(size));
        }
        Ok(Self {
            size,
            capacity: 1u64 << (8 * size),
            next_fresh: 0,
            released: VecDeque::new(),
            in_use: HashSet::new(),
        })
    }

    pub fn size(&self) -> usize {
        self.size
    }

    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// A prefix: the one `wanted` (hex session id) if free, else a fresh or released one.
    pub fn allocate(&mut self, wanted: Option<&str>) -> Result<Vec<u8>, ExtranonceError> {
        if let Some(v) = wanted.and_then(|w| self.parse(w))
            && self.in_use.insert(v)
        {
            // A never-issued id stays marked in use; the fresh counter passes over it.
            if let Some(pos) = self.released.iter().position(|&r| r == v) {
                self.released.remove(pos);
            }
            return Ok(self.encode(v));
        }
        while self.next_fresh < self.capacity {
            let v = self.next_fresh as u32;
            self.next_fresh += 1;
            if self.in_use.insert(v) {
                return Ok(self.encode(v));
            }
        }
        while let Some(v) = self.released.pop_front() {
            if self.in_use.insert(v) {
                return Ok(self.encode(v));
            }
        }
        Err(ExtranonceError::Exhausted(self.capacity))
    }

    pub fn release(&mut self, prefix: &[u8]) {
        if prefix.len() != self.size {
            return;
        }
        let v = prefix
            .iter()
            .fold(0u32, |acc, &b| (acc << 8) | u32::from(b));
        if self.in_use.remove(&v) && u64::from(v) < self.next_fresh {
            self.released.push_back(v);
        }
    }

    fn parse(&self, hex_id: &str) -> Option<u32> {
        let bytes = hex::decode(hex_id).ok()?;
        (bytes.len() == self.size)
            .then(|| bytes.iter().fold(0u32, |acc, &b| (acc << 8) | u32::from(b)))
    }

    fn encode(&self, v: u32) -> Vec<u8> {
        v.to_be_bytes()[4 - self.size..].to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_until_exhausted_then_reuses_oldest_release() {
        let mut a = ExtranonceAllocator::new(1).unwrap();
        let all: Vec<_> = (0..256).map(|_| a.allocate(None).unwrap()).collect();
        let set: HashSet<_> = all.iter().cloned().collect();
        assert_eq!(set.len(), 256);
        assert_eq!(a.allocate(None), Err(ExtranonceError::Exhausted(256)));
        a.release(&[7]);
        a.release(&[3]);
        assert_eq!(a.allocate(None).unwrap(), vec![7]);
        assert_eq!(a.allocate(None).unwrap(), vec![3]);
    }

    #[test]
    fn fresh_before_released_and_resume_gets_old_prefix() {
        let mut a = ExtranonceAllocator::new(2).unwrap();
        let p0 = a.allocate(None).unwrap();
        assert_eq!(p0, vec![0, 0]);
        a.release(&p0);
        assert_eq!(a.allocate(None).unwrap(), vec![0, 1], "fresh first");
        assert_eq!(a.allocate(Some("0000")).unwrap(), vec![0, 0], "resume");
        assert_eq!(
            a.allocate(Some("0000")).unwrap(),
            vec![0, 2],
            "taken: a new one"
        );
        assert_eq!(
            a.allocate(Some("00ff")).unwrap(),
            vec![0, 0xff],
            "unissued id is honoured"
        );
        assert_eq!(
            a.allocate(Some("zz")).unwrap(),
            vec![0, 3],
            "garbage id ignored"
        );
        // next_fresh passes over 0x00ff later without handing it out twice.
        let mut seen = HashSet::new();
        for _ in 0..300 {
            assert!(seen.insert(a.allocate(None).unwrap()));
        }
        assert!(!seen.contains(&vec![0, 0xff]));
        assert_eq!(a.in_use(), 305);
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Op {
            Allocate,
            /// Resume with a session id: a valid one (of the right size), or garbage.
            Resume(Vec<u8>),
            /// Release the n-th live prefix (modulo how many there are).
            Release(usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => Just(Op::Allocate),
                2 => proptest::collection::vec(any::<u8>(), 0..3).prop_map(Op::Resume),
                3 => any::<usize>().prop_map(Op::Release),
            ]
        }

        proptest! {
            /// Whatever miners do (come, resume with any id, leave), no two live miners
            /// share a prefix, and the allocator refuses only when every prefix is live.
            #[test]
            fn live_prefixes_never_collide(size in 1usize..3, ops in proptest::collection::vec(op(), 1..600)) {
                let mut a = ExtranonceAllocator::new(size).unwrap();
                let mut live: Vec<Vec<u8>> = Vec::new();
                for op in ops {
                    let got = match op {
                        Op::Allocate => a.allocate(None),
                        Op::Resume(id) => a.allocate(Some(&hex::encode(id))),
                        Op::Release(n) => {
                            if !live.is_empty() {
                                let p = live.swap_remove(n % live.len());
                                a.release(&p);
                            }
                            continue;
                        }
                    };
                    match got {
                        Ok(p) => {
                            prop_assert_eq!(p.len(), size);
                            prop_assert!(!live.contains(&p), "{:?} handed out twice", p);
                            live.push(p);
                        }
                        Err(ExtranonceError::Exhausted(n)) => {
                            prop_assert_eq!(live.len() as u64, n);
                        }
                        Err(e) => prop_assert!(false, "{}", e),
                    }
                    prop_assert_eq!(a.in_use(), live.len());
                }
            }
        }
    }

    #[test]
    fn sizes_are_bounded() {
        assert!(ExtranonceAllocator::new(0).is_err());
        assert!(ExtranonceAllocator::new(5).is_err());
        assert_eq!(ExtranonceAllocator::new(4).unwrap().capacity(), 1 << 32);
    }
}
