//! Values of every kind serde has, for holding the encoder and the decoder against
//! postcard and against each other (tests only).

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde::{Deserialize, Serialize};

use crate::wire::codec::Bytes;

/// Every kind of value serde has, with `N` as its numbers. With `u8` it has no integer
/// wider than a byte, so multiproc's format and postcard's agree on it byte for byte.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Sample<N> {
    flag: bool,
    small: (i8, u8),
    floats: (f32, f64),
    c: char,
    text: String,
    blob: Bytes,
    opt: Option<Box<Shape<N>>>,
    shapes: Vec<Shape<N>>,
    map: BTreeMap<String, Vec<N>>,
    unit: (),
    marker: Marker,
    wrapped: Wrapped<N>,
}

/// A value in multiproc's format and postcard's alike.
pub(crate) type Plain = Sample<u8>;

/// Every kind of value, and every integer type.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Wide {
    sample: Sample<i64>,
    ints: (i16, i32, i64, i128),
    uints: (u16, u32, u64, u128, usize),
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) enum Shape<N> {
    Point,
    Circle(f64),
    Rect(N, N),
    Named { name: String, sides: N },
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Marker;

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub(crate) struct Wrapped<N>(N);

pub(crate) fn shape<N: Arbitrary + Clone + 'static>() -> impl Strategy<Value = Shape<N>> {
    prop_oneof![
        Just(Shape::Point),
        any::<f64>().prop_map(Shape::Circle),
        (any::<N>(), any::<N>()).prop_map(|(a, b)| Shape::Rect(a, b)),
        (".{0,20}", any::<N>()).prop_map(|(name, sides)| Shape::Named { name, sides }),
    ]
}

pub(crate) fn sample<N: Arbitrary + Clone + std::fmt::Debug + 'static>()
-> impl Strategy<Value = Sample<N>> {
    (
        (
            any::<bool>(),
            any::<(i8, u8)>(),
            any::<(f32, f64)>(),
            any::<char>(),
        ),
        (
            ".{0,200}",
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes),
        ),
        (
            proptest::option::of(shape::<N>().prop_map(Box::new)),
            proptest::collection::vec(shape::<N>(), 0..20),
            proptest::collection::btree_map(
                ".{0,8}",
                proptest::collection::vec(any::<N>(), 0..5),
                0..6,
            ),
            any::<N>(),
        ),
    )
        .prop_map(
            |((flag, small, floats, c), (text, blob), (opt, shapes, map, n))| Sample {
                flag,
                small,
                floats,
                c,
                text,
                blob,
                opt,
                shapes,
                map,
                unit: (),
                marker: Marker,
                wrapped: Wrapped(n),
            },
        )
}

pub(crate) fn wide() -> impl Strategy<Value = Wide> {
    (
        sample::<i64>(),
        any::<(i16, i32, i64, i128)>(),
        any::<(u16, u32, u64, u128, usize)>(),
    )
        .prop_map(|(sample, ints, uints)| Wide {
            sample,
            ints,
            uints,
        })
}

/// Values that sit where varints change length, and the extremes.
pub(crate) fn edges() -> Vec<u128> {
    let mut v = vec![0, u128::MAX, u128::from(u64::MAX), u128::from(u64::MAX) + 1];
    for bits in (7..128).step_by(7) {
        v.extend([(1u128 << bits) - 1, 1u128 << bits]);
    }
    v
}
