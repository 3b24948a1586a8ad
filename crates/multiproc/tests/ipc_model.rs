//! The queue against a model: a `VecDeque`, under random sequences of operations.

mod watchdog;

use std::collections::VecDeque;

use multiproc::{Queue, TrySendError};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    Put(u32),
    Get,
    Len,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => any::<u32>().prop_map(Op::Put),
        3 => Just(Op::Get),
        1 => Just(Op::Len),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A bounded queue behaves exactly like a bounded `VecDeque`.
    #[test]
    fn bounded_queue_is_a_fifo(cap in 1usize..20, ops in prop::collection::vec(op(), 0..400)) {
        let q = Queue::<u32>::bounded(cap).unwrap();
        let mut model = VecDeque::new();
        for op in ops {
            match op {
                Op::Put(v) => match q.try_put(v) {
                    Ok(()) => {
                        prop_assert!(model.len() < cap);
                        model.push_back(v);
                    }
                    Err(TrySendError::Full(back)) => {
                        prop_assert_eq!(back, v);
                        prop_assert_eq!(model.len(), cap);
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                },
                Op::Get => match q.try_get() {
                    Ok(v) => prop_assert_eq!(Some(v), model.pop_front()),
                    Err(e) => {
                        prop_assert!(e.is_empty(), "{e}");
                        prop_assert!(model.is_empty());
                    }
                },
                Op::Len => prop_assert_eq!(q.len(), model.len()),
            }
        }
    }

    /// Items of any size (in the ring, wrapping around it, or too large for it) come
    /// out in the order they went in, intact.
    #[test]
    fn items_of_any_size_keep_their_order(
        sizes in prop::collection::vec(prop_oneof![
            6 => 0usize..2000,
            2 => 2000usize..70_000,
            1 => 200_000usize..600_000,
        ], 1..60),
        gets in prop::collection::vec(any::<bool>(), 60),
    ) {
        let q = Queue::<Vec<u8>>::new().unwrap();
        let mut model = VecDeque::new();
        for (i, (size, get)) in sizes.iter().zip(gets.iter().cycle()).enumerate() {
            let item = vec![i as u8; *size];
            match q.try_put(item.clone()) {
                Ok(()) => model.push_back(item),
                Err(TrySendError::Full(_)) => prop_assert!(!model.is_empty(), "full while empty"),
                Err(e) => prop_assert!(false, "{e}"),
            }
            if *get {
                prop_assert_eq!(q.try_get().ok(), model.pop_front());
            }
        }
        while let Some(expected) = model.pop_front() {
            prop_assert_eq!(q.try_get().ok(), Some(expected));
        }
        prop_assert!(q.try_get().unwrap_err().is_empty());
    }
}
