//! The encoder: postcard's wire format, written by a serializer of our own.
//!
//! Postcard decodes what crosses a process boundary; this writes it. Postcard's own
//! serializer is generic over output "flavors" and passes every integer through a
//! zeroed buffer copied byte by byte into the flavor: 6.6–7.3 ns per `u64` of a slice
//! into a `Vec`, which made encoding the largest single cost of a `Pool::map` of
//! trivial tasks (the parent encodes every item, each worker every result). Writing
//! the varint straight into the vector's spare room takes 2–3 ns. The format is
//! postcard 1.x's, byte for byte (the tests hold this against postcard itself):
//! LEB128 varints for `u16`–`u128` and lengths, zigzag before that for `i16`–`i128`,
//! one byte for `u8`, `i8` and `bool`, little-endian IEEE for floats, a varint length
//! before strings, byte strings, sequences and maps, a varint variant index before an
//! enum's content, 0 or 1 before an option's, nothing for units, and struct and tuple
//! fields in order. Unlike postcard's, a `Serialize` implementation's own error comes
//! back with its message.
#![allow(unsafe_code)]

use std::fmt;

use serde::ser::{self, Serialize};

/// An encode failed: a `Serialize` implementation refused, a sequence did not say its
/// length, or the value did not fit the slice it was written into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for EncodeError {}

impl ser::Error for EncodeError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        EncodeError(msg.to_string())
    }
}

fn full() -> EncodeError {
    EncodeError("the value does not fit the room given for it".into())
}

/// Appends `value`'s encoding to `out`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(
    value: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    let mut enc = Encoder(out);
    value.serialize(&mut enc)?;
    Ok(enc.0)
}

/// The length of `value`'s encoding, found without writing it.
pub(crate) fn len_of<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    let mut enc = Encoder(Count(0));
    value.serialize(&mut enc)?;
    Ok(enc.0.0)
}

/// Writes `value`'s encoding at the start of `buf`; how many bytes it took.
pub(crate) fn to_slice<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut enc = Encoder(Slice { buf, at: 0 });
    value.serialize(&mut enc)?;
    Ok(enc.0.at)
}

/// Where encoded bytes go.
trait Output {
    fn byte(&mut self, b: u8) -> Result<(), EncodeError>;
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError>;
    /// `v` as a LEB128 varint (at most 10 bytes).
    fn varint(&mut self, v: u64) -> Result<(), EncodeError>;
}

/// The bytes of `v` as a varint, in `buf`; how many.
fn varint_into(mut v: u64, buf: &mut [u8; 10]) -> usize {
    let mut i = 0;
    while v >= 0x80 {
        buf[i] = v as u8 | 0x80;
        v >>= 7;
        i += 1;
    }
    buf[i] = v as u8;
    i + 1
}

impl Output for Vec<u8> {
    #[inline]
    fn byte(&mut self, b: u8) -> Result<(), EncodeError> {
        self.push(b);
        Ok(())
    }

    #[inline]
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.extend_from_slice(b);
        Ok(())
    }

    #[inline]
    fn varint(&mut self, mut v: u64) -> Result<(), EncodeError> {
        self.reserve(10);
        let len = self.len();
        let mut n = 0;
        // SAFETY: `reserve` made room for 10 bytes past `len`, and a varint of a `u64`
        // is at most 10 bytes (each holds 7 bits; 10 × 7 ≥ 64), so every write lands in
        // the allocation. `set_len` then covers exactly the bytes written.
        unsafe {
            let p = self.as_mut_ptr().add(len);
            while v >= 0x80 {
                p.add(n).write(v as u8 | 0x80);
                v >>= 7;
                n += 1;
            }
            p.add(n).write(v as u8);
            self.set_len(len + n + 1);
        }
        Ok(())
    }
}

/// Counts the bytes instead of writing them.
struct Count(usize);

impl Output for Count {
    fn byte(&mut self, _: u8) -> Result<(), EncodeError> {
        self.0 += 1;
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.0 += b.len();
        Ok(())
    }

    fn varint(&mut self, v: u64) -> Result<(), EncodeError> {
        let bits = 64 - (v | 1).leading_zeros() as usize;
        self.0 += bits.div_ceil(7);
        Ok(())
    }
}

/// Writes into a slice, failing once it is full.
struct Slice<'a> {
    buf: &'a mut [u8],
    at: usize,
}

impl Output for Slice<'_> {
    fn byte(&mut self, b: u8) -> Result<(), EncodeError> {
        *self.buf.get_mut(self.at).ok_or_else(full)? = b;
        self.at += 1;
        Ok(())
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        let end = self.at.checked_add(b.len()).ok_or_else(full)?;
        self.buf
            .get_mut(self.at..end)
            .ok_or_else(full)?
            .copy_from_slice(b);
        self.at = end;
        Ok(())
    }

    fn varint(&mut self, v: u64) -> Result<(), EncodeError> {
        let mut tmp = [0; 10];
        let n = varint_into(v, &mut tmp);
        self.bytes(&tmp[..n])
    }
}

struct Encoder<O>(O);

impl<O: Output> Encoder<O> {
    fn varint_u128(&mut self, mut v: u128) -> Result<(), EncodeError> {
        while v >= 0x80 {
            self.0.byte(v as u8 | 0x80)?;
            v >>= 7;
        }
        self.0.byte(v as u8)
    }

    fn len(&mut self, len: Option<usize>) -> Result<(), EncodeError> {
        let len = len.ok_or_else(|| {
            EncodeError("a sequence or map that does not say its length cannot be encoded".into())
        })?;
        self.0.varint(len as u64)
    }
}

type Done = Result<(), EncodeError>;

/// The start of a tuple or struct variant: its index; its fields follow.
macro_rules! variant_starts {
    ($($name:ident),*) => {$(
        fn $name(
            self,
            _: &'static str,
            index: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Self, EncodeError> {
            self.0.varint(u64::from(index)).map(|()| self)
        }
    )*};
}

impl<O: Output> ser::Serializer for &mut Encoder<O> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Self;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Self;
    type SerializeStruct = Self;
    type SerializeStructVariant = Self;

    fn is_human_readable(&self) -> bool {
        false
    }

    #[inline]
    fn serialize_bool(self, v: bool) -> Done {
        self.0.byte(u8::from(v))
    }
    #[inline]
    fn serialize_i8(self, v: i8) -> Done {
        self.0.byte(v as u8)
    }
    #[inline]
    fn serialize_i16(self, v: i16) -> Done {
        self.0.varint(u64::from(((v << 1) ^ (v >> 15)) as u16))
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Done {
        self.0.varint(u64::from(((v << 1) ^ (v >> 31)) as u32))
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Done {
        self.0.varint(((v << 1) ^ (v >> 63)) as u64)
    }
    fn serialize_i128(self, v: i128) -> Done {
        self.varint_u128(((v << 1) ^ (v >> 127)) as u128)
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Done {
        self.0.byte(v)
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Done {
        self.0.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Done {
        self.0.varint(u64::from(v))
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Done {
        self.0.varint(v)
    }
    fn serialize_u128(self, v: u128) -> Done {
        self.varint_u128(v)
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Done {
        self.0.bytes(&v.to_le_bytes())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Done {
        self.0.bytes(&v.to_le_bytes())
    }
    fn serialize_char(self, v: char) -> Done {
        self.serialize_str(v.encode_utf8(&mut [0; 4]))
    }
    fn serialize_str(self, v: &str) -> Done {
        self.serialize_bytes(v.as_bytes())
    }
    fn serialize_bytes(self, v: &[u8]) -> Done {
        self.0.varint(v.len() as u64)?;
        self.0.bytes(v)
    }
    #[inline]
    fn serialize_none(self) -> Done {
        self.0.byte(0)
    }
    #[inline]
    fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Done {
        self.0.byte(1)?;
        value.serialize(self)
    }
    fn serialize_unit(self) -> Done {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Done {
        self.0.varint(u64::from(index))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Done {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Done {
        self.0.varint(u64::from(index))?;
        v.serialize(self)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        Ok(self)
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    variant_starts!(serialize_tuple_variant, serialize_struct_variant);
    fn serialize_map(self, len: Option<usize>) -> Result<Self, EncodeError> {
        self.len(len)?;
        Ok(self)
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, EncodeError> {
        Ok(self)
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Done {
        // (`to_string` would panic on a `Display` that fails.)
        let mut text = String::new();
        fmt::write(&mut text, format_args!("{value}"))
            .map_err(|_| EncodeError("a `Display` implementation failed".into()))?;
        self.serialize_str(&text)
    }
}

/// The compound parts: each element or field is written in turn, nothing around them.
macro_rules! compound {
    ($($trait:ident :: $method:ident ($($key:ty),*);)*) => {$(
        impl<O: Output> ser::$trait for &mut Encoder<O> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)* v: &T) -> Done {
                v.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Done {
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeSeq::serialize_element();
    SerializeTuple::serialize_element();
    SerializeTupleStruct::serialize_field();
    SerializeTupleVariant::serialize_field();
    SerializeStruct::serialize_field(&'static str);
    SerializeStructVariant::serialize_field(&'static str);
}

impl<O: Output> ser::SerializeMap for &mut Encoder<O> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Done {
        k.serialize(&mut **self)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
        v.serialize(&mut **self)
    }
    fn end(self) -> Done {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::wire::codec::Bytes;

    /// Every kind of value serde has, for holding the encoder against postcard's.
    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct All {
        flag: bool,
        small: (i8, u8),
        ints: (i16, i32, i64, i128),
        uints: (u16, u32, u64, u128, usize),
        floats: (f32, f64),
        c: char,
        text: String,
        blob: Bytes,
        opt: Option<Box<Shape>>,
        shapes: Vec<Shape>,
        map: BTreeMap<String, Vec<i64>>,
        unit: (),
        marker: Marker,
        wrapped: Wrapped,
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    enum Shape {
        Point,
        Circle(f64),
        Rect(u32, i32),
        Named { name: String, sides: u64 },
    }

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Marker;

    #[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
    struct Wrapped(i32);

    fn shape() -> impl Strategy<Value = Shape> {
        prop_oneof![
            Just(Shape::Point),
            any::<f64>().prop_map(Shape::Circle),
            (any::<u32>(), any::<i32>()).prop_map(|(a, b)| Shape::Rect(a, b)),
            (".{0,20}", any::<u64>()).prop_map(|(name, sides)| Shape::Named { name, sides }),
        ]
    }

    prop_compose! {
        fn all()(
            flag in any::<bool>(),
            small in any::<(i8, u8)>(),
            ints in any::<(i16, i32, i64, i128)>(),
            uints in any::<(u16, u32, u64, u128, usize)>(),
            floats in any::<(f32, f64)>(),
            c in any::<char>(),
            text in ".{0,200}",
            blob in proptest::collection::vec(any::<u8>(), 0..300).prop_map(Bytes),
            opt in proptest::option::of(shape().prop_map(Box::new)),
            shapes in proptest::collection::vec(shape(), 0..20),
            map in proptest::collection::btree_map(".{0,8}", proptest::collection::vec(any::<i64>(), 0..5), 0..6),
            wrapped in any::<i32>(),
        ) -> All {
            All { flag, small, ints, uints, floats, c, text, blob, opt, shapes, map, unit: (), marker: Marker, wrapped: Wrapped(wrapped) }
        }
    }

    /// Values that sit where varints change length, and the extremes.
    fn edges() -> Vec<u128> {
        let mut v = vec![0, u128::MAX, u128::from(u64::MAX), u128::from(u64::MAX) + 1];
        for bits in (7..128).step_by(7) {
            v.extend([(1u128 << bits) - 1, 1u128 << bits]);
        }
        v
    }

    fn same_as_postcard<T: Serialize + ?Sized + fmt::Debug>(value: &T) {
        let theirs = postcard::to_allocvec(value).unwrap();
        let ours = to_vec(value, Vec::new()).unwrap();
        assert_eq!(ours, theirs, "{value:?}");
        assert_eq!(len_of(value).unwrap(), theirs.len(), "{value:?}");
        let mut buf = vec![0xAA; theirs.len() + 3];
        assert_eq!(to_slice(value, &mut buf).unwrap(), theirs.len());
        assert_eq!(&buf[..theirs.len()], &theirs[..]);
        if !theirs.is_empty() {
            let mut short = vec![0; theirs.len() - 1];
            assert!(to_slice(value, &mut short).is_err(), "{value:?}");
        }
    }

    #[test]
    fn integers_at_every_varint_boundary_match_postcard() {
        for e in edges() {
            same_as_postcard(&e);
            same_as_postcard(&(e as i128));
            same_as_postcard(&(e as u64));
            same_as_postcard(&(e as i64));
            same_as_postcard(&(e as u32, e as i32, e as u16, e as i16, e as usize));
            same_as_postcard(&(e as i128).wrapping_neg());
            same_as_postcard(&(e as i64).wrapping_neg());
        }
        for v in [i128::MIN, i128::MAX, -1, 1] {
            same_as_postcard(&v);
        }
        for v in [i64::MIN, i64::MAX, i32::MIN as i64] {
            same_as_postcard(&v);
        }
    }

    #[test]
    fn text_and_odd_shapes_match_postcard() {
        same_as_postcard(&'\u{10FFFF}');
        same_as_postcard(&"é€😀".to_string());
        same_as_postcard(&"x".repeat(300));
        same_as_postcard(&(f32::NAN, f64::NEG_INFINITY, -0.0f64));
        same_as_postcard(&Some(Some(())));
        same_as_postcard(&Vec::<Shape>::new());
        same_as_postcard(&Shape::Named {
            name: "hexagon".into(),
            sides: 6,
        });
        same_as_postcard(&vec![0u64; 1000]);
        same_as_postcard(&(0..5000u64).map(|x| x * x * x).collect::<Vec<_>>());
        same_as_postcard(&std::net::Ipv4Addr::LOCALHOST);
        same_as_postcard(&std::time::Duration::from_nanos(123_456_789_012));
    }

    #[test]
    fn displayed_values_match_postcard() {
        struct Shown(u32);
        impl Serialize for Shown {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&format_args!("n={}", self.0))
            }
        }
        impl fmt::Debug for Shown {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "Shown({})", self.0)
            }
        }
        same_as_postcard(&Shown(42));
        // A `Display` that fails is an error, as in postcard, not a panic.
        struct Fails;
        impl fmt::Display for Fails {
            fn fmt(&self, _: &mut fmt::Formatter<'_>) -> fmt::Result {
                Err(fmt::Error)
            }
        }
        struct ShownFailing;
        impl Serialize for ShownFailing {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(&Fails)
            }
        }
        assert!(to_vec(&ShownFailing, Vec::new()).is_err());
        assert!(len_of(&ShownFailing).is_err());
        assert!(postcard::to_allocvec(&ShownFailing).is_err());
    }

    #[test]
    fn refusals_keep_their_message() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(ser::Error::custom("not today"))
            }
        }
        let e = to_vec(&(1u8, vec![Refuses]), Vec::new()).unwrap_err();
        assert_eq!(e.to_string(), "not today");
        assert_eq!(len_of(&Refuses).unwrap_err().to_string(), "not today");

        struct Endless;
        impl Serialize for Endless {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use ser::SerializeSeq;
                let mut seq = s.serialize_seq(None)?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        let e = to_vec(&Endless, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("length"), "{e}");
        assert!(postcard::to_allocvec(&Endless).is_err());
    }

    proptest! {
        #[test]
        fn every_value_encodes_as_postcard_does_and_decodes_back(value in all(), prefix in proptest::collection::vec(any::<u8>(), 0..9)) {
            same_as_postcard(&value);
            // Appended after what the vector held.
            let out = to_vec(&value, prefix.clone()).unwrap();
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            let back: All = postcard::from_bytes(&out[prefix.len()..]).unwrap();
            // NaN is not equal to itself: compare encodings instead.
            prop_assert_eq!(to_vec(&back, Vec::new()).unwrap(), to_vec(&value, Vec::new()).unwrap());
        }
    }
}
