//! The decoder: multiproc's wire format (see `wire/encoder.rs`), read by a
//! deserializer of our own.
//!
//! It reads what the encoder writes: postcard 1.x's format with integers wider than a
//! byte whole and little-endian. It accepts and refuses what postcard does wherever the
//! two formats agree (the tests and the `decode` fuzz target hold it against postcard on
//! types with no such integers): a length or variant index longer than its type allows,
//! or whose last byte carries bits the type has no room for, is refused; a `char` is a
//! string of at most four bytes holding exactly one character; a sequence's length
//! sizes nothing when fewer bytes are left than it claims, or than the lengths that
//! sized allocations before it in the same value leave (see [`Decoder::hint`]);
//! `deserialize_any`,
//! `deserialize_identifier` and `deserialize_ignored_any` are refused, since the format
//! records no types or names. Unlike postcard's, a `Deserialize` implementation's own
//! error comes back with its message, and what a decode may cost is bounded whatever the
//! bytes say: values nest at most [`MAX_DEPTH`] levels, and sequences and maps hold at
//! most [`MAX_EMPTY`] elements that take no bytes.

#[cfg(any(test, fuzzing))]
use std::fmt;

use serde::de::{self, DeserializeSeed, IntoDeserializer, Visitor};

/// A decode failed: the bytes ended early or hold something the type cannot be, or a
/// `Deserialize` implementation refused.
pub(crate) type DecodeError = super::WireError;

const fn fails(why: &'static str) -> DecodeError {
    DecodeError::fixed(why)
}

const END: DecodeError = fails("the bytes end in the middle of the value");
const BAD_VARINT: DecodeError =
    fails("a length or variant index is encoded longer than its type allows");
const BAD_BOOL: DecodeError = fails("a bool is neither 0 nor 1");
const BAD_CHAR: DecodeError = fails("a char is not exactly one valid character");
const BAD_UTF8: DecodeError = fails("a string is not valid UTF-8");
const BAD_OPTION: DecodeError = fails("an option's tag is neither 0 nor 1");
const NO_TYPES: DecodeError = fails(
    "the type asks what the bytes hold (`deserialize_any`: untagged or internally tagged \
     enums, flattened structs, self-describing values), and this format does not record it",
);
const NO_SKIPPING: DecodeError = fails(
    "the type asks to skip a value or to read a field's name, and this format records \
     neither where a value ends nor names",
);

const TOO_DEEP: DecodeError = fails(
    "the value nests deeper than 1024 levels (sequences, maps, tuples, structs, enums, \
     options and newtypes within one another)",
);
const TOO_MANY_EMPTY: DecodeError = fails(
    "the sequences and maps hold more than 16,777,216 elements that take no bytes \
     (unit values, empty structs or arrays)",
);

/// How deeply values may nest: each sequence, map, tuple, struct, enum, present option
/// and newtype counts a level. Only a recursive type (a list or tree through `Box`,
/// `Vec` or `Option`) nests without a bound, and decoding it recurses, a frame or two
/// per level; the format costs a byte or so per level, so without a limit a short
/// message from a broken or hostile peer would run any stack out (a crash, not an
/// error). Derived `Deserialize` code takes 100–150 bytes of stack per level (measured
/// for recursive enums and structs, debug and release builds), so 1024 levels fit in a
/// few hundred KiB of a thread's 2 MiB.
pub(crate) const MAX_DEPTH: u32 = 1024;
/// How many elements of sequences and maps may take no bytes in one value: each other
/// element takes at least a byte, but a `Vec<()>` may claim any length in a few bytes,
/// and decoding it would loop that many times.
pub(crate) const MAX_EMPTY: u32 = 1 << 24;

/// Reads values from the front of a byte slice.
pub(crate) struct Decoder<'de> {
    input: &'de [u8],
    /// Levels of nesting still allowed.
    depth: u32,
    /// Elements that sequence and map lengths may still size allocations by.
    hints: std::cell::Cell<usize>,
    /// Elements that take no bytes still allowed.
    empty: u32,
}

type Result<T> = std::result::Result<T, DecodeError>;

impl<'de> Decoder<'de> {
    pub(crate) fn new(input: &'de [u8]) -> Self {
        Decoder {
            input,
            depth: MAX_DEPTH,
            hints: std::cell::Cell::new(input.len()),
            empty: MAX_EMPTY,
        }
    }

    /// The length of a sequence or map to size an allocation by (serde's `size_hint`):
    /// the sender's `count`, unless fewer bytes are left than that, or the lengths
    /// given out before in this value leave fewer. Every element but one that takes no
    /// bytes takes a byte at least, so the lengths of all of a value's sequences and
    /// maps add up to no more than its bytes; nested sequences that each claimed as
    /// many elements as bytes are left would have serde reserve up to 1 MiB for each,
    /// hundreds of MiB for a message of a few KiB (no memory touched, but all of it
    /// counted against an address-space limit).
    fn hint(&self, count: usize) -> Option<usize> {
        let left = self.hints.get();
        (self.input.len() >= count && left >= count).then(|| {
            self.hints.set(left - count);
            count
        })
    }

    /// Runs `f` one level deeper; refused past [`MAX_DEPTH`].
    #[inline(always)]
    fn nested<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let Some(left) = self.depth.checked_sub(1) else {
            return Err(TOO_DEEP);
        };
        self.depth = left;
        let out = f(self);
        self.depth = left + 1;
        out
    }

    /// Counts an element that took no bytes; refused past [`MAX_EMPTY`].
    #[cold]
    fn took_nothing(&mut self) -> Result<()> {
        self.empty = self.empty.checked_sub(1).ok_or(TOO_MANY_EMPTY)?;
        Ok(())
    }

    /// The bytes not decoded yet.
    pub(crate) fn rest(&self) -> &'de [u8] {
        self.input
    }

    #[inline]
    fn byte(&mut self) -> Result<u8> {
        let (&b, rest) = self.input.split_first().ok_or(END)?;
        self.input = rest;
        Ok(b)
    }

    #[inline]
    fn take(&mut self, n: usize) -> Result<&'de [u8]> {
        if self.input.len() < n {
            return Err(END);
        }
        let (taken, rest) = self.input.split_at(n);
        self.input = rest;
        Ok(taken)
    }

    #[inline(always)]
    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let (a, rest) = self.input.split_first_chunk::<N>().ok_or(END)?;
        self.input = rest;
        Ok(*a)
    }

    /// A LEB128 varint of at most `max` bytes (`max` ≤ 10), the last of which may be at
    /// most `last`: postcard's bounds for a `u32` (5, 0x0f) and a `u64` (10, 0x01).
    #[inline(always)]
    fn varint(&mut self, max: usize, last: u8) -> Result<u64> {
        let input = self.input;
        let window = input.get(..max).unwrap_or(input);
        let mut out = 0u64;
        for (i, &b) in window.iter().enumerate() {
            out |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                if i == max - 1 && b > last {
                    return Err(BAD_VARINT);
                }
                self.input = &input[i + 1..];
                return Ok(out);
            }
        }
        Err(if window.len() == max { BAD_VARINT } else { END })
    }

    /// A variant index.
    fn varint_u32(&mut self) -> Result<u32> {
        self.varint(5, 0x0f).map(|v| v as u32)
    }

    /// A length: a `usize` varint, read as postcard reads one (at most 10 bytes on a
    /// 64-bit target, 5 on a 32-bit one).
    fn varint_usize(&mut self) -> Result<usize> {
        #[cfg(target_pointer_width = "64")]
        let v = self.varint(10, 0x01)?;
        #[cfg(not(target_pointer_width = "64"))]
        let v = self.varint(5, 0x0f)?;
        usize::try_from(v).map_err(|_| BAD_VARINT)
    }
}

impl<'de> de::Deserializer<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn is_human_readable(&self) -> bool {
        false
    }

    fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(NO_TYPES)
    }

    fn deserialize_bool<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_bool(false),
            1 => visitor.visit_bool(true),
            _ => Err(BAD_BOOL),
        }
    }

    fn deserialize_i8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i8(self.byte()? as i8)
    }

    fn deserialize_i16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i16(i16::from_le_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_i32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i32(i32::from_le_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_i64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i64(i64::from_le_bytes(self.array()?))
    }

    fn deserialize_i128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_i128(i128::from_le_bytes(self.array()?))
    }

    fn deserialize_u8<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u8(self.byte()?)
    }

    fn deserialize_u16<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u16(u16::from_le_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_u32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u32(u32::from_le_bytes(self.array()?))
    }

    #[inline]
    fn deserialize_u64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u64(u64::from_le_bytes(self.array()?))
    }

    fn deserialize_u128<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_u128(u128::from_le_bytes(self.array()?))
    }

    fn deserialize_f32<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f32(f32::from_le_bytes(self.array()?))
    }

    fn deserialize_f64<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_f64(f64::from_le_bytes(self.array()?))
    }

    fn deserialize_char<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        if len > 4 {
            return Err(BAD_CHAR);
        }
        // Exactly one character (postcard 1.1 took the first of several).
        let mut chars = std::str::from_utf8(self.take(len)?)
            .map_err(|_| BAD_CHAR)?
            .chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => visitor.visit_char(c),
            _ => Err(BAD_CHAR),
        }
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        let s = std::str::from_utf8(self.take(len)?).map_err(|_| BAD_UTF8)?;
        visitor.visit_borrowed_str(s)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_str(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        let len = self.varint_usize()?;
        visitor.visit_borrowed_bytes(self.take(len)?)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        match self.byte()? {
            0 => visitor.visit_none(),
            1 => self.nested(|de| visitor.visit_some(de)),
            _ => Err(BAD_OPTION),
        }
    }

    fn deserialize_unit<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        visitor.visit_unit()
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_newtype_struct(de))
    }

    #[inline]
    fn deserialize_seq<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.nested(|de| {
            let left = de.varint_usize()?;
            visitor.visit_seq(Elements::<true> { de, left, mark: 0 })
        })
    }

    fn deserialize_tuple<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        self.nested(|de| {
            visitor.visit_seq(Elements::<false> {
                de,
                left: len,
                mark: 0,
            })
        })
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value> {
        self.nested(|de| {
            let left = de.varint_usize()?;
            visitor.visit_map(Elements::<true> { de, left, mark: 0 })
        })
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.deserialize_tuple(fields.len(), visitor)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        _: &'static str,
        _: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        self.nested(|de| visitor.visit_enum(de))
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(NO_SKIPPING)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value> {
        Err(NO_SKIPPING)
    }
}

/// The elements of a sequence, tuple or struct, or the entries of a map: `left` more.
/// `COUNTED`: the count came from the bytes (a sequence or a map, not a tuple or struct),
/// so elements that take no bytes are counted against [`MAX_EMPTY`].
struct Elements<'a, 'de, const COUNTED: bool> {
    de: &'a mut Decoder<'de>,
    left: usize,
    /// Bytes left when the current map entry began.
    mark: usize,
}

impl<'de, const COUNTED: bool> de::SeqAccess<'de> for Elements<'_, 'de, COUNTED> {
    type Error = DecodeError;

    #[inline]
    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        let before = self.de.input.len();
        let value = seed.deserialize(&mut *self.de)?;
        if COUNTED && self.de.input.len() == before {
            self.de.took_nothing()?;
        }
        Ok(Some(value))
    }

    /// The count the sender wrote, unless fewer bytes are left than that (as postcard:
    /// a length no input could hold must not size an allocation), or than the lengths
    /// before it leave ([`Decoder::hint`]).
    fn size_hint(&self) -> Option<usize> {
        self.de.hint(self.left)
    }
}

impl<'de, const COUNTED: bool> de::MapAccess<'de> for Elements<'_, 'de, COUNTED> {
    type Error = DecodeError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>> {
        if self.left == 0 {
            return Ok(None);
        }
        self.left -= 1;
        self.mark = self.de.input.len();
        seed.deserialize(&mut *self.de).map(Some)
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value> {
        let value = seed.deserialize(&mut *self.de)?;
        if self.de.input.len() == self.mark {
            self.de.took_nothing()?;
        }
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        self.de.hint(self.left)
    }
}

impl<'de> de::EnumAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self)> {
        let index = self.varint_u32()?;
        let v = seed.deserialize(IntoDeserializer::<DecodeError>::into_deserializer(index))?;
        Ok((v, self))
    }
}

impl<'de> de::VariantAccess<'de> for &mut Decoder<'de> {
    type Error = DecodeError;

    fn unit_variant(self) -> Result<()> {
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(self, seed: T) -> Result<T::Value> {
        seed.deserialize(self)
    }

    fn tuple_variant<V: Visitor<'de>>(self, len: usize, visitor: V) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, len, visitor)
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value> {
        de::Deserializer::deserialize_tuple(self, fields.len(), visitor)
    }
}

/// Decodes a `T` with both postcard and [`Decoder`] and panics where they disagree:
/// one accepts what the other refuses, or they read different values or leave
/// different remainders. `T` must be a type the two formats agree on: one with no
/// integer wider than a byte. For the tests and the `decode` fuzz target.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_against_postcard<T>(bytes: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + fmt::Debug,
{
    let theirs = postcard::take_from_bytes::<T>(bytes);
    let mut de = Decoder::new(bytes);
    let ours = T::deserialize(&mut de).map(|v| (v, de.rest()));
    match (theirs, ours) {
        (Ok((a, rest_a)), Ok((b, rest_b))) => {
            // Compared by encoding: floats may be NaN, which equals nothing.
            assert_eq!(
                postcard::to_allocvec(&a).expect("re-encode"),
                postcard::to_allocvec(&b).expect("re-encode"),
                "{bytes:?}: postcard read {a:?}, the decoder {b:?}"
            );
            assert_eq!(rest_a.len(), rest_b.len(), "{bytes:?}: remainders differ");
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("{bytes:?}: postcard {a:?}, the decoder {b:?}"),
    }
}

/// Decodes a `T`, which may hold integers of any width, from arbitrary bytes: it may be
/// refused, never a panic, and what is read encodes to no more bytes than it was read
/// from (fewer where the bytes hold a varint written longer than it needs, or a map
/// key twice). For the tests and the `decode` fuzz target.
#[cfg(any(test, fuzzing))]
pub(crate) fn check_whole<T: serde::de::DeserializeOwned + serde::Serialize>(bytes: &[u8]) {
    let mut de = Decoder::new(bytes);
    if let Ok(value) = T::deserialize(&mut de) {
        let read = bytes.len() - de.rest().len();
        let again = super::encoder::to_vec(&value, Vec::new()).expect("re-encode");
        assert!(
            again.len() <= read,
            "{bytes:?}: read {read} bytes, wrote {}",
            again.len()
        );
    }
}

/// A recursive type, for the tests and the `decode` fuzz target: arbitrary bytes may
/// nest it as deep as they like, and claim any number of empty elements, so decoding it
/// reaches both of the decoder's limits.
#[cfg(any(test, fuzzing))]
#[derive(serde::Serialize, serde::Deserialize, Debug)]
pub(crate) enum Tree {
    Leaf(u64),
    Node(Vec<Tree>),
    Maybe(Option<Box<Tree>>),
    Wrapped(Box<(Tree, u8)>),
    Units(Vec<()>),
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::wire::codec::Bytes;
    use crate::wire::encoder;
    use crate::wire::samples::{Plain, Shape, Wide, edges, sample, wide};
    use proptest::prelude::*;

    fn decode<'de, T: Deserialize<'de>>(bytes: &'de [u8]) -> Result<(T, usize)> {
        let mut de = Decoder::new(bytes);
        let v = T::deserialize(&mut de)?;
        Ok((v, de.rest().len()))
    }

    fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
        encoder::to_vec(value, Vec::new()).unwrap()
    }

    /// Any variant index, as an enum's visitor sees it.
    #[derive(Debug, Serialize)]
    struct Variant(u32);

    impl<'de> Deserialize<'de> for Variant {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct V;
            impl<'de> Visitor<'de> for V {
                type Value = Variant;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an enum")
                }
                fn visit_enum<A: de::EnumAccess<'de>>(
                    self,
                    a: A,
                ) -> std::result::Result<Variant, A::Error> {
                    let (index, rest) = a.variant::<u32>()?;
                    de::VariantAccess::unit_variant(rest)?;
                    Ok(Variant(index))
                }
            }
            d.deserialize_enum("Variant", &[], V)
        }
    }

    /// Whole integers of every width at the edges read back; cut short, they are
    /// refused.
    #[test]
    fn wide_integers_read_back_and_short_ones_are_refused() {
        fn each<T: serde::de::DeserializeOwned + Serialize + PartialEq + fmt::Debug>(v: T) {
            let bytes = encode(&v);
            assert_eq!(decode::<T>(&bytes).unwrap(), (v, 0));
            for cut in 0..bytes.len() {
                assert_eq!(decode::<T>(&bytes[..cut]).unwrap_err(), END);
            }
        }
        for e in edges() {
            each(e);
            each(e as i128);
            each(e as u64);
            each(e as usize);
            each((e as i64).wrapping_neg());
            each(e as u32);
            each(e as i32);
            each(e as u16);
            each(e as i16);
        }
    }

    /// Variant indices at every varint boundary (read into any enum's visitor), as
    /// written and with each of their bytes cut off or a continuation bit added: read
    /// as postcard reads them.
    #[test]
    fn varints_at_every_boundary_read_as_postcard_reads_them() {
        for e in edges() {
            let index = u64::try_from(e).unwrap_or(u64::MAX);
            let bytes = postcard::to_allocvec(&index).unwrap();
            let mut longer = bytes.clone();
            *longer.last_mut().unwrap() |= 0x80;
            let mut cases = vec![bytes.clone()];
            cases.extend((0..bytes.len()).map(|cut| bytes[..cut].to_vec()));
            for extra in [0x00, 0x01, 0x02, 0x03, 0x04, 0x0f, 0x10, 0x7f] {
                let mut b = longer.clone();
                b.push(extra);
                cases.push(b);
            }
            for b in &cases {
                let theirs = postcard::from_bytes::<u32>(b);
                let ours = decode::<Variant>(b).map(|(v, _)| v.0);
                assert_eq!(theirs.ok(), ours.ok(), "{b:?}");
            }
        }
        // Lengths: ten bytes at most, the tenth holding one bit.
        assert_eq!(decode::<Bytes>(&[0xff; 11]).unwrap_err(), BAD_VARINT);
        assert_eq!(decode::<Bytes>(&[0xff; 3]).unwrap_err(), END);
        let mut top = [0xff; 10];
        top[9] = 0x01;
        assert_eq!(decode::<Bytes>(&top).unwrap_err(), END);
        top[9] = 0x02;
        assert_eq!(decode::<Bytes>(&top).unwrap_err(), BAD_VARINT);
        assert_eq!(
            decode::<Bytes>(&[0x82, 0x00, 7, 8]).unwrap(),
            (Bytes(vec![7, 8]), 0)
        );
    }

    #[test]
    fn odd_bytes_read_as_postcard_reads_them() {
        let cases: &[&[u8]] = &[
            &[],
            &[2],
            &[0xff],
            &[5, b'a', b'b', b'c', b'd', b'e'],
            &[2, b'a', b'b'],
            &[2, 0xc3, 0xa9],
            &[1, 0xc3],
            &[4, 0xf0, 0x9f, 0x98, 0x80],
            &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
        ];
        for bytes in cases {
            check_against_postcard::<bool>(bytes);
            check_against_postcard::<char>(bytes);
            check_against_postcard::<String>(bytes);
            check_against_postcard::<Option<u8>>(bytes);
            check_against_postcard::<Vec<i8>>(bytes);
            check_against_postcard::<(f32, u8)>(bytes);
            check_against_postcard::<Shape<u8>>(bytes);
            check_against_postcard::<std::result::Result<u8, String>>(bytes);
        }
    }

    #[test]
    fn a_char_is_exactly_one_character() {
        assert_eq!(decode::<char>(&[1, b'a']).unwrap(), ('a', 0));
        assert_eq!(
            decode::<char>(&[4, 0xf0, 0x9f, 0x98, 0x80]).unwrap(),
            ('😀', 0)
        );
        for bad in [
            &[2, b'a', b'b'][..],
            &[0],
            &[1, 0xc3],
            &[5, b'a', b'a', b'a', b'a', b'a'],
        ] {
            assert_eq!(decode::<char>(bad).unwrap_err(), BAD_CHAR, "{bad:?}");
        }
    }

    #[test]
    fn strings_and_bytes_are_borrowed_from_the_input() {
        let bytes = encode(&("héllo", Bytes(vec![1, 2])));
        let ((s, b), left) = decode::<(&str, &[u8])>(&bytes).unwrap();
        assert_eq!((s, b, left), ("héllo", &[1u8, 2][..], 0));
        assert!(bytes.as_ptr_range().contains(&s.as_ptr()));
    }

    #[test]
    fn a_refusal_keeps_its_message_and_self_describing_types_are_refused() {
        struct Refuses;
        impl<'de> Deserialize<'de> for Refuses {
            fn deserialize<D: serde::Deserializer<'de>>(
                _: D,
            ) -> std::result::Result<Self, D::Error> {
                Err(de::Error::custom("not today"))
            }
        }
        let e = decode::<(u8, Refuses)>(&[1]).map(|_| ()).unwrap_err();
        assert_eq!(e.to_string(), "not today");

        #[derive(Deserialize, Debug)]
        #[serde(untagged)]
        #[allow(dead_code)]
        enum Either {
            N(u8),
            S(String),
        }
        assert_eq!(decode::<Either>(&[1]).unwrap_err(), NO_TYPES);
        // What the crate's documentation names as not received: an internally tagged
        // enum (encoded without complaint) fails with the same error.
        #[derive(Serialize, Deserialize, Debug)]
        #[serde(tag = "kind")]
        enum Tagged {
            Ping { n: u8 },
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct Inner {
            n: u8,
        }
        #[derive(Serialize, Deserialize, Debug)]
        struct Flat {
            #[serde(flatten)]
            inner: Inner,
        }
        let tagged = encoder::to_vec(&Tagged::Ping { n: 1 }, Vec::new()).unwrap();
        assert_eq!(decode::<Tagged>(&tagged).unwrap_err(), NO_TYPES);
        // A flattened struct is refused as it is sent (its fields go as a map of no
        // stated length).
        assert!(
            encoder::to_vec(
                &Flat {
                    inner: Inner { n: 1 }
                },
                Vec::new()
            )
            .is_err()
        );
        assert_eq!(
            decode::<serde::de::IgnoredAny>(&[1]).unwrap_err(),
            NO_SKIPPING
        );
    }

    #[test]
    fn a_length_no_input_could_hold_sizes_nothing() {
        // u64::MAX elements claimed, two bytes given: an error, not an allocation.
        let mut bytes = postcard::to_allocvec(&u64::MAX).unwrap();
        bytes.extend([1, 2]);
        check_against_postcard::<Vec<u8>>(&bytes);
        check_against_postcard::<std::collections::BTreeMap<u8, u8>>(&bytes);
        assert_eq!(decode::<Vec<u64>>(&bytes).unwrap_err(), END);

        // What a visitor that trusts the hint (to size an allocation) is told.
        struct Hint(Option<usize>);
        impl<'de> Deserialize<'de> for Hint {
            fn deserialize<D: serde::Deserializer<'de>>(
                d: D,
            ) -> std::result::Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Hint;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str("a sequence")
                    }
                    fn visit_seq<A: de::SeqAccess<'de>>(
                        self,
                        s: A,
                    ) -> std::result::Result<Hint, A::Error> {
                        Ok(Hint(s.size_hint()))
                    }
                }
                d.deserialize_seq(V)
            }
        }
        let hint = |bytes: &[u8]| decode::<Hint>(bytes).unwrap().0.0;
        assert_eq!(hint(&bytes), None);
        assert_eq!(hint(&[2, 7, 8]), Some(2));
        assert_eq!(hint(&[3, 7, 8]), None);
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Whatever postcard wrote of a value the two formats agree on, the decoder
        /// reads as postcard reads it, and so it does every prefix of it and the bytes
        /// with one of them changed.
        #[test]
        fn reads_plain_values_as_postcard_does(value in sample::<u8>(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let bytes = postcard::to_allocvec(&value).unwrap();
            let (back, left) = decode::<Plain>(&bytes).unwrap();
            prop_assert_eq!(left, 0);
            prop_assert_eq!(postcard::to_allocvec(&back).unwrap(), bytes.clone());
            check_against_postcard::<Plain>(&bytes);
            let i = at.index(bytes.len());
            check_against_postcard::<Plain>(&bytes[..i]);
            let mut changed = bytes.clone();
            changed[i] = to;
            check_against_postcard::<Plain>(&changed);
        }

        /// Arbitrary bytes: the same value, remainder or refusal as postcard. (Random
        /// bytes rarely get far into `Plain`, which starts with a bool and a char; the
        /// types after it take most bytes as they come.)
        #[test]
        fn arbitrary_bytes_read_as_postcard_reads_them(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            check_against_postcard::<(Vec<u8>, Option<i8>, String)>(&bytes);
            check_against_postcard::<Vec<Option<(u8, Shape<u8>)>>>(&bytes);
            check_against_postcard::<std::collections::BTreeMap<u8, Vec<bool>>>(&bytes);
            check_against_postcard::<Plain>(&bytes);
            check_against_postcard::<Vec<Shape<u8>>>(&bytes);
            check_against_postcard::<(Option<bool>, char, String)>(&bytes);
            check_whole::<Wide>(&bytes);
            check_whole::<(u16, i32, i64, i128, u128, usize)>(&bytes);
            check_whole::<Vec<(u64, Option<i16>)>>(&bytes);
            check_whole::<Tree>(&bytes);
        }

        /// Any value with wide integers reads back whole; every prefix of it is refused
        /// and one byte changed is read or refused, never a panic.
        #[test]
        fn wide_values_read_back(value in wide(), at in any::<prop::sample::Index>(), to in any::<u8>()) {
            let bytes = encode(&value);
            let (back, left) = decode::<Wide>(&bytes).unwrap();
            prop_assert_eq!(left, 0);
            prop_assert_eq!(encode(&back), bytes.clone());
            let i = at.index(bytes.len());
            prop_assert!(decode::<Wide>(&bytes[..i]).is_err());
            let mut changed = bytes.clone();
            changed[i] = to;
            let _ = decode::<Wide>(&changed);
        }
    }

    thread_local! {
        static HINTED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A tree whose decoding adds up the lengths its sequences were hinted (the
    /// allocations serde would size by them).
    #[derive(Debug)]
    struct Hinted(Vec<Hinted>);

    impl<'de> Deserialize<'de> for Hinted {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            struct Nodes;
            impl<'de> Visitor<'de> for Nodes {
                type Value = Hinted;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a sequence of nodes")
                }
                fn visit_seq<A: de::SeqAccess<'de>>(
                    self,
                    mut seq: A,
                ) -> std::result::Result<Hinted, A::Error> {
                    let hint = seq.size_hint().unwrap_or(0);
                    HINTED.with(|h| h.set(h.get() + hint));
                    let mut nodes = Vec::new();
                    while let Some(node) = seq.next_element()? {
                        nodes.push(node);
                    }
                    Ok(Hinted(nodes))
                }
            }
            d.deserialize_seq(Nodes)
        }
    }

    /// The lengths that size allocations add up to no more than the value's bytes: 500
    /// nested sequences that each claim 32,768 elements, with that many bytes after
    /// them, had serde reserve 1 MiB for each (500 MiB for 34 KiB). An honest value's
    /// lengths all size its allocations.
    #[test]
    fn nested_lengths_size_no_more_than_the_bytes() {
        let hinted = |bytes: &[u8]| {
            HINTED.with(|h| h.set(0));
            let decoded = decode::<Hinted>(bytes).map(|(tree, _)| tree.0.len());
            (decoded, HINTED.with(|h| h.get()))
        };
        let claim = 1 << 15;
        let mut bytes = Vec::new();
        for _ in 0..500 {
            bytes.extend(length(claim));
        }
        bytes.extend(vec![0u8; claim]);
        let (decoded, sum) = hinted(&bytes);
        assert_eq!(decoded, Err(END));
        assert!(
            sum <= bytes.len(),
            "{sum} elements hinted in {} bytes",
            bytes.len()
        );
        // Three nodes of two leaves each.
        let honest = [3, 2, 0, 0, 2, 0, 0, 2, 0, 0];
        assert_eq!(hinted(&honest), (Ok(3), 9));
    }

    /// Records how far down the stack it was decoded.
    #[derive(Debug, Serialize)]
    struct Probe;

    thread_local! {
        static LOWEST: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }

    impl<'de> Deserialize<'de> for Probe {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
            let here = 0u8;
            let at = std::ptr::addr_of!(here) as usize;
            LOWEST.with(|l| l.set(l.get().min(at)));
            <()>::deserialize(d).map(|()| Probe)
        }
    }

    /// A level per node: the enum.
    #[derive(Debug, Serialize, Deserialize)]
    enum List {
        Nil(Probe),
        Cons(Box<List>),
    }

    /// Two levels per node: the struct and the present option.
    #[derive(Debug, Serialize, Deserialize)]
    struct Node(Option<Box<Node>>, Probe);

    /// A sequence's or map's length, as the encoder writes it.
    fn length(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        while n >= 0x80 {
            out.push(n as u8 | 0x80);
            n >>= 7;
        }
        out.push(n as u8);
        out
    }

    /// `n` nested nodes of a [`List`]: `n + 1` levels.
    fn list_bytes(n: usize) -> Vec<u8> {
        let mut bytes = vec![1u8; n];
        bytes.push(0);
        bytes
    }

    /// Decodes `bytes` as a `T`; whether it was accepted, and how much stack it took.
    fn stack_used<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> (bool, usize) {
        let top = 0u8;
        let top = std::ptr::addr_of!(top) as usize;
        LOWEST.with(|l| l.set(usize::MAX));
        let ok = decode::<T>(bytes).is_ok();
        (ok, top.saturating_sub(LOWEST.with(|l| l.get())))
    }

    #[test]
    fn nesting_is_bounded_and_fits_a_threads_stack() {
        let depth = MAX_DEPTH as usize;
        // Exactly the limit: accepted, in well under a thread's 2 MiB of stack.
        let (ok, used) = stack_used::<List>(&list_bytes(depth - 1));
        assert!(ok);
        assert!(
            used < 512 * 1024,
            "{used} bytes of stack for {depth} levels"
        );
        let mut node = vec![1u8; depth / 2 - 1];
        node.push(0);
        let (ok, used) = stack_used::<Node>(&node);
        assert!(ok);
        assert!(
            used < 512 * 1024,
            "{used} bytes of stack for {depth} levels"
        );
        // One more: refused, with the reason.
        let err = decode::<List>(&list_bytes(depth)).unwrap_err();
        assert_eq!(err, TOO_DEEP);
        assert!(
            err.to_string()
                .contains(&format!("deeper than {depth} levels"))
        );
        let mut node = vec![1u8; depth / 2];
        node.push(0);
        assert_eq!(decode::<Node>(&node).unwrap_err(), TOO_DEEP);
        // Ten million levels in ten megabytes: refused, not a stack overflow.
        assert_eq!(
            decode::<List>(&list_bytes(10_000_000)).unwrap_err(),
            TOO_DEEP
        );
        // Levels are counted down a path, not across siblings: many lists side by side,
        // each as deep as allowed under the vector, decode.
        let mut many = length(1000);
        for _ in 0..1000 {
            many.extend(list_bytes(depth - 2));
        }
        let (lists, rest) = decode::<Vec<List>>(&many).unwrap();
        assert_eq!((lists.len(), rest), (1000, 0));
        // And what encodes within the limit decodes back.
        let mut deep = List::Nil(Probe);
        for _ in 0..depth - 1 {
            deep = List::Cons(Box::new(deep));
        }
        assert_eq!(encode(&deep), list_bytes(depth - 1));
        // One level more does not encode: refused at the sender, with the reason, where
        // it encoded and failed only at the receiver.
        let deeper = List::Cons(Box::new(deep));
        let err = encoder::to_vec(&deeper, Vec::new()).unwrap_err();
        assert!(err.to_string().contains("deeper than 1024 levels"), "{err}");
        assert!(encoder::len_of(&deeper).is_err());
    }

    /// Every kind of level, nested in any order.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    enum Deep {
        Unit,
        Newtype(Box<Deep>),
        Tuple(Box<Deep>, u8),
        Struct { inner: Box<Deep> },
        Seq(Vec<Deep>),
        Map(std::collections::BTreeMap<u8, Deep>),
        Option(Option<Box<Deep>>),
        Wrapped(Wrapped),
        Fields(Fields),
        Pair((u8, Box<Deep>)),
    }

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Wrapped(Box<Deep>);

    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Fields {
        inner: Box<Deep>,
    }

    /// A chain of `kinds` (each picking a kind of level) around a unit.
    fn chain(kinds: &[u8]) -> Deep {
        let mut d = Deep::Unit;
        for &k in kinds.iter().rev() {
            let b = Box::new(d);
            d = match k % 9 {
                0 => Deep::Newtype(b),
                1 => Deep::Tuple(b, 7),
                2 => Deep::Struct { inner: b },
                3 => Deep::Seq(vec![*b]),
                4 => Deep::Map([(1, *b)].into()),
                5 => Deep::Option(Some(b)),
                6 => Deep::Wrapped(Wrapped(b)),
                7 => Deep::Fields(Fields { inner: b }),
                _ => Deep::Pair((3, b)),
            };
        }
        d
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]

        /// The encoder refuses a value exactly when the decoder would refuse its bytes
        /// for its depth (the bytes taken from postcard, which has no limit and writes
        /// these types as this format does), at every depth around the limit.
        #[test]
        fn the_encoder_refuses_what_the_decoder_would_for_depth(
            kinds in proptest::collection::vec(0u8..9, 480..620),
        ) {
            let value = chain(&kinds);
            let bytes = postcard::to_allocvec(&value).unwrap();
            let decoded = decode::<Deep>(&bytes).map(|(_, rest)| rest);
            let encoded = encoder::to_vec(&value, Vec::new());
            proptest::prop_assert_eq!(decoded.is_ok(), encoded.is_ok(), "{:?}", decoded);
            if let Ok(ours) = encoded {
                proptest::prop_assert_eq!(ours, bytes);
            } else {
                proptest::prop_assert_eq!(decoded.unwrap_err(), TOO_DEEP);
            }
        }
    }

    #[test]
    fn elements_that_take_no_bytes_are_bounded() {
        let most = MAX_EMPTY as usize;
        // A `Vec<()>` claiming the largest length: refused after `MAX_EMPTY` elements,
        // rather than looping for ever (a decode that does not end fails the wait).
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(decode::<Vec<()>>(&length(usize::MAX)).map(|_| ()));
        });
        let err = rx
            .recv_timeout(std::time::Duration::from_secs(60))
            .expect("the decode ends")
            .unwrap_err();
        assert_eq!(err, TOO_MANY_EMPTY);
        assert!(err.to_string().contains("16,777,216"), "{err}");
        assert_eq!(1 << 24, most);
        // Exactly the limit decodes; one more does not, also when spread over several
        // sequences, or over a map's entries.
        assert_eq!(
            decode::<Vec<()>>(&encode(&vec![(); most])).unwrap().0.len(),
            most
        );
        assert_eq!(
            decode::<Vec<()>>(&encode(&vec![(); most + 1])).unwrap_err(),
            TOO_MANY_EMPTY
        );
        let halves = vec![vec![[0u8; 0]; most / 2], vec![[0u8; 0]; most / 2 + 1]];
        assert_eq!(
            decode::<Vec<Vec<[u8; 0]>>>(&encode(&halves)).unwrap_err(),
            TOO_MANY_EMPTY
        );
        assert_eq!(
            decode::<std::collections::BTreeMap<(), ()>>(&length(usize::MAX)).unwrap_err(),
            TOO_MANY_EMPTY
        );
        // An entry whose key takes no bytes but whose value does counts nothing.
        let mut bytes = length(most + 1);
        bytes.extend(std::iter::repeat_n(7u8, most + 1));
        assert_eq!(
            decode::<std::collections::BTreeMap<(), u8>>(&bytes)
                .unwrap()
                .0
                .len(),
            1
        );
        // Fields that take no bytes in elements that do are not counted: a struct with
        // a unit field, a tuple with a marker.
        assert_eq!(
            decode::<Vec<(u8, ())>>(&encode(&vec![(1u8, ()); most + 1]))
                .unwrap()
                .0
                .len(),
            most + 1
        );
    }
}
