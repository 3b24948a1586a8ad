//! The encoder: multiproc's wire format, written by a serializer of our own.
//!
//! The format is postcard 1.x's with one change: integers wider than a byte are written
//! whole, little-endian, where postcard writes LEB128 varints (zigzagged for signed
//! ones). Exactly: `bool`, `u8` and `i8` one byte; `u16`–`u128` and `i16`–`i128` their
//! little-endian bytes (a `usize` as a `u64`); floats their little-endian IEEE bytes; a
//! `char` as a string of its UTF-8; a varint length before strings, byte strings,
//! sequences and maps; a varint variant index before an enum's content; 0 or 1 before
//! an option's content; nothing for units; struct and tuple fields in order. Lengths and
//! variant indices, small numbers in the main, keep postcard's varints. Types with no
//! integer wider than a byte encode exactly as postcard encodes them, and the tests
//! hold them against postcard itself.
//!
//! Why whole integers: every value crossing a process boundary is encoded once and
//! decoded once, nearly always with both sides on one machine, so the time matters more
//! than the bytes. A varint is a loop over its bytes each way, with a branch on each; a
//! `Pool::map` of trivial tasks encodes and decodes two integers per item, and those
//! loops were its largest single cost. Whole integers (and our own decoder, which reads
//! one with a single bounds check) took its CPU per item, all processes together, from
//! 33–36 ns to 21–23 ns (`perf stat` of `multiproc-bench loop maps 20000000`, 2
//! workers, three interleaved runs each). Postcard's own serializer, used before any of
//! this, was slower again: it passes every integer through a zeroed buffer copied byte
//! by byte into its output flavor (6.6–7.3 ns per `u64` against 2–3 ns for a varint
//! written straight into the vector). Unlike postcard's, a `Serialize`
//! implementation's own error comes back with its message.
#![allow(unsafe_code)]

use std::fmt;

use serde::ser::{self, Serialize};

use super::decoder::MAX_DEPTH;

/// An encode failed: a `Serialize` implementation refused, a sequence did not say its
/// length, the value nests deeper than [`MAX_DEPTH`] levels, or it did not fit the
/// slice it was written into.
pub(crate) type EncodeError = super::WireError;

fn full() -> EncodeError {
    EncodeError::fixed("the value does not fit the room given for it")
}

/// Appends `value`'s encoding to `out`.
pub(crate) fn to_vec<T: Serialize + ?Sized>(
    value: &T,
    out: Vec<u8>,
) -> Result<Vec<u8>, EncodeError> {
    let mut enc = Encoder(out, 0);
    value.serialize(&mut enc)?;
    Ok(enc.0)
}

/// The length of `value`'s encoding, found without writing it.
pub(crate) fn len_of<T: Serialize + ?Sized>(value: &T) -> Result<usize, EncodeError> {
    let mut enc = Encoder(Count(0), 0);
    value.serialize(&mut enc)?;
    Ok(enc.0.0)
}

/// The length of `value`'s encoding if it is at most `most` bytes; `None` if longer
/// (found without measuring the rest) or if the value refuses to be encoded.
pub(crate) fn len_up_to<T: Serialize + ?Sized>(value: &T, most: usize) -> Option<usize> {
    let mut enc = Encoder(CountUpTo { n: 0, most }, 0);
    value.serialize(&mut enc).ok()?;
    Some(enc.0.n)
}

/// Writes `value`'s encoding at the start of `buf`; how many bytes it took.
pub(crate) fn to_slice<T: Serialize + ?Sized>(
    value: &T,
    buf: &mut [u8],
) -> Result<usize, EncodeError> {
    let mut enc = Encoder(Slice { buf, at: 0 }, 0);
    value.serialize(&mut enc)?;
    Ok(enc.0.at)
}

/// Where encoded bytes go.
trait Output {
    fn byte(&mut self, b: u8) -> Result<(), EncodeError>;
    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError>;
    /// A whole integer's bytes (a fixed count: written without a call to `memcpy`).
    #[inline]
    fn array<const N: usize>(&mut self, b: [u8; N]) -> Result<(), EncodeError> {
        self.bytes(&b)
    }
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

    #[inline(always)]
    fn array<const N: usize>(&mut self, b: [u8; N]) -> Result<(), EncodeError> {
        self.reserve(N);
        let len = self.len();
        // SAFETY: `reserve` made room for `N` bytes past `len`; the unaligned write
        // fills exactly those, and `set_len` then covers them.
        unsafe {
            self.as_mut_ptr()
                .add(len)
                .cast::<[u8; N]>()
                .write_unaligned(b);
            self.set_len(len + N);
        }
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
        self.0 += varint_len(v);
        Ok(())
    }
}

/// Bytes `v` takes as a LEB128 varint.
fn varint_len(v: u64) -> usize {
    let bits = 64 - (v | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

/// Counts, failing once past `most`.
struct CountUpTo {
    n: usize,
    most: usize,
}

impl CountUpTo {
    fn add(&mut self, n: usize) -> Result<(), EncodeError> {
        self.n += n;
        if self.n > self.most {
            return Err(full());
        }
        Ok(())
    }
}

impl Output for CountUpTo {
    fn byte(&mut self, _: u8) -> Result<(), EncodeError> {
        self.add(1)
    }

    fn bytes(&mut self, b: &[u8]) -> Result<(), EncodeError> {
        self.add(b.len())
    }

    fn varint(&mut self, v: u64) -> Result<(), EncodeError> {
        self.add(varint_len(v))
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

/// Where the bytes go, and how many levels deep the value being written is (counted as
/// the decoder counts them, see [`MAX_DEPTH`]).
struct Encoder<O>(O, u32);

/// A value nested deeper than the decoder reads, refused at the sender: it encoded, and
/// failed only at the receiver, as the message it could not read.
fn too_deep() -> EncodeError {
    EncodeError::fixed(
        "the value nests deeper than 1024 levels (sequences, maps, tuples, structs, enums, \
         options and newtypes within one another), more than a receiver decodes",
    )
}

impl<O: Output> Encoder<O> {
    /// Goes `levels` deeper; refused past [`MAX_DEPTH`].
    #[inline]
    fn enter(&mut self, levels: u32) -> Done {
        let depth = self.1 + levels;
        if depth > MAX_DEPTH {
            return Err(too_deep());
        }
        self.1 = depth;
        Ok(())
    }

    /// Writes `v` one level deeper.
    #[inline]
    fn nested<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
        self.enter(1)?;
        v.serialize(&mut *self)?;
        self.1 -= 1;
        Ok(())
    }

    /// Writes a sequence's or map's length; the length.
    fn len(&mut self, len: Option<usize>) -> Result<usize, EncodeError> {
        let len = len.ok_or_else(|| {
            EncodeError::fixed(
                "a sequence or map that does not say its length cannot be encoded (a struct \
                 with `#[serde(flatten)]` writes its fields so)",
            )
        })?;
        self.0.varint(len as u64)?;
        Ok(len)
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
            // The enum, and the tuple of its fields.
            self.enter(2)?;
            self.0.varint(u64::from(index)).map(|()| self)
        }
    )*};
}

impl<'a, O: Output> ser::Serializer for &'a mut Encoder<O> {
    type Ok = ();
    type Error = EncodeError;
    type SerializeSeq = Listed<'a, O>;
    type SerializeTuple = Self;
    type SerializeTupleStruct = Self;
    type SerializeTupleVariant = Self;
    type SerializeMap = Listed<'a, O>;
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
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_i32(self, v: i32) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_i64(self, v: i64) -> Done {
        self.0.array(v.to_le_bytes())
    }
    fn serialize_i128(self, v: i128) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_u8(self, v: u8) -> Done {
        self.0.byte(v)
    }
    #[inline]
    fn serialize_u16(self, v: u16) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_u32(self, v: u32) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_u64(self, v: u64) -> Done {
        self.0.array(v.to_le_bytes())
    }
    fn serialize_u128(self, v: u128) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_f32(self, v: f32) -> Done {
        self.0.array(v.to_le_bytes())
    }
    #[inline]
    fn serialize_f64(self, v: f64) -> Done {
        self.0.array(v.to_le_bytes())
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
        self.nested(value)
    }
    fn serialize_unit(self) -> Done {
        Ok(())
    }
    fn serialize_unit_struct(self, _: &'static str) -> Done {
        Ok(())
    }
    fn serialize_unit_variant(self, _: &'static str, index: u32, _: &'static str) -> Done {
        // The decoder enters the enum to read which variant it is.
        if self.1 >= MAX_DEPTH {
            return Err(too_deep());
        }
        self.0.varint(u64::from(index))
    }
    fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Done {
        self.nested(v)
    }
    fn serialize_newtype_variant<T: Serialize + ?Sized>(
        self,
        _: &'static str,
        index: u32,
        _: &'static str,
        v: &T,
    ) -> Done {
        self.0.varint(u64::from(index))?;
        self.nested(v)
    }
    #[inline]
    fn serialize_seq(self, len: Option<usize>) -> Result<Listed<'a, O>, EncodeError> {
        self.enter(1)?;
        let left = self.len(len)?;
        Ok(Listed { enc: self, left })
    }
    fn serialize_tuple(self, _: usize) -> Result<Self, EncodeError> {
        self.enter(1)?;
        Ok(self)
    }
    fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Self, EncodeError> {
        self.enter(1)?;
        Ok(self)
    }
    variant_starts!(serialize_tuple_variant, serialize_struct_variant);
    fn serialize_map(self, len: Option<usize>) -> Result<Listed<'a, O>, EncodeError> {
        self.enter(1)?;
        let left = self.len(len)?;
        Ok(Listed { enc: self, left })
    }
    fn serialize_struct(self, _: &'static str, _: usize) -> Result<Self, EncodeError> {
        self.enter(1)?;
        Ok(self)
    }
    fn collect_str<T: fmt::Display + ?Sized>(self, value: &T) -> Done {
        // (`to_string` would panic on a `Display` that fails.)
        let mut text = String::new();
        fmt::write(&mut text, format_args!("{value}"))
            .map_err(|_| EncodeError::fixed("a `Display` implementation failed"))?;
        self.serialize_str(&text)
    }
}

/// The compound parts: each element or field is written in turn, nothing around them;
/// the end leaves the levels the start entered.
macro_rules! compound {
    ($($trait:ident :: $method:ident ($($key:ty),*) $levels:literal;)*) => {$(
        impl<O: Output> ser::$trait for &mut Encoder<O> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)* v: &T) -> Done {
                v.serialize(&mut **self)
            }
            #[inline]
            fn end(self) -> Done {
                self.1 -= $levels;
                Ok(())
            }
        }
    )*};
}

compound! {
    SerializeTuple::serialize_element() 1;
    SerializeTupleStruct::serialize_field() 1;
    SerializeTupleVariant::serialize_field() 2;
}

/// A struct's fields: written in turn, as the compound parts above, and none skipped.
/// The format records no field names: a field left out (`skip_serializing_if`, which
/// serde tells the serializer of with `skip_field`) would have the next field's bytes
/// read in its place, a wrong value or a confusing error at the receiver. Refused at
/// the sender instead.
macro_rules! fields {
    ($($trait:ident $levels:literal),*) => {$(
        impl<O: Output> ser::$trait for &mut Encoder<O> {
            type Ok = ();
            type Error = EncodeError;
            #[inline]
            fn serialize_field<T: Serialize + ?Sized>(&mut self, _: &'static str, v: &T) -> Done {
                v.serialize(&mut **self)
            }
            fn skip_field(&mut self, key: &'static str) -> Done {
                Err(<EncodeError as ser::Error>::custom(format_args!(
                    "field `{key}` is skipped (`skip_serializing_if`): this format records no field \
                     names, so every field must be written (the receiver would read the next \
                     field's bytes in its place)"
                )))
            }
            #[inline]
            fn end(self) -> Done {
                self.1 -= $levels;
                Ok(())
            }
        }
    )*};
}

fields!(SerializeStruct 1, SerializeStructVariant 2);

/// A sequence's elements or a map's entries, counted against the length it said it has:
/// the format writes that length first, and the receiver reads as many. A `Serialize`
/// whose elements do not match it (a collection another thread changes while it is
/// sent, whose length was read first) was read wrong, or failed, at the receiver, after
/// the send had said it went: refused here instead.
struct Listed<'a, O: Output> {
    enc: &'a mut Encoder<O>,
    left: usize,
}

impl<O: Output> Listed<'_, O> {
    /// One element (or entry) more: counted down without a branch, and checked at the
    /// end (the bytes of any number of elements go in the output, bounded as any other).
    #[inline]
    fn one_more(&mut self) {
        self.left = self.left.wrapping_sub(1);
    }

    fn finish(self) -> Done {
        if self.left != 0 {
            return Err(EncodeError::fixed(
                "a sequence or map wrote another number of elements than the length it said \
                 it has (a collection changed while it was encoded?)",
            ));
        }
        self.enc.1 -= 1;
        Ok(())
    }
}

impl<O: Output> ser::SerializeSeq for Listed<'_, O> {
    type Ok = ();
    type Error = EncodeError;
    #[inline]
    fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
        self.one_more();
        v.serialize(&mut *self.enc)
    }
    #[inline]
    fn end(self) -> Done {
        self.finish()
    }
}

impl<O: Output> ser::SerializeMap for Listed<'_, O> {
    type Ok = ();
    type Error = EncodeError;
    fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Done {
        self.one_more();
        k.serialize(&mut *self.enc)
    }
    fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Done {
        v.serialize(&mut *self.enc)
    }
    fn end(self) -> Done {
        self.finish()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde::Serialize;

    use super::*;
    use crate::wire::samples::{Plain, Shape, Wide, edges, sample, wide};

    /// A sequence (or map) that says it has `said` elements and writes `wrote`: what a
    /// collection changed by another thread between its length and its walk gives.
    struct Misstated {
        said: usize,
        wrote: u8,
        map: bool,
    }

    impl Serialize for Misstated {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::{SerializeMap, SerializeSeq};
            if self.map {
                let mut m = s.serialize_map(Some(self.said))?;
                for i in 0..self.wrote {
                    m.serialize_entry(&i, &i)?;
                }
                m.end()
            } else {
                let mut q = s.serialize_seq(Some(self.said))?;
                for i in 0..self.wrote {
                    q.serialize_element(&i)?;
                }
                q.end()
            }
        }
    }

    /// A sequence or map whose elements do not match the length it said is refused as
    /// it is encoded: written, the receiver read that many elements, taking the bytes
    /// after them for them (a wrong value, or an error at the receiver after the send
    /// had said it went). The measure refuses it too, and one that matches goes.
    #[test]
    fn a_sequence_that_misstates_its_length_is_refused() {
        for map in [false, true] {
            for (said, wrote) in [(2, 3), (3, 2), (0, 1), (1, 0)] {
                let v = Misstated { said, wrote, map };
                let e = to_vec(&v, Vec::new()).unwrap_err();
                assert!(e.to_string().contains("than the length it said"), "{e}");
                assert!(
                    len_of(&v).is_err(),
                    "measured: {said} said, {wrote} written"
                );
                // Inside a value, too.
                assert!(to_vec(&(1u8, v, 2u8), Vec::new()).is_err());
            }
            let fine = Misstated {
                said: 3,
                wrote: 3,
                map,
            };
            assert!(to_vec(&fine, Vec::new()).is_ok());
        }
    }

    /// `to_vec`, `len_of` and `to_slice` agree on `value`'s bytes, and a slice one byte
    /// short is refused; the bytes.
    fn consistent<T: Serialize + ?Sized + fmt::Debug>(value: &T) -> Vec<u8> {
        let ours = to_vec(value, Vec::new()).unwrap();
        assert_eq!(len_of(value).unwrap(), ours.len(), "{value:?}");
        let mut buf = vec![0xAA; ours.len() + 3];
        assert_eq!(to_slice(value, &mut buf).unwrap(), ours.len());
        assert_eq!(&buf[..ours.len()], &ours[..]);
        if !ours.is_empty() {
            let mut short = vec![0; ours.len() - 1];
            assert!(to_slice(value, &mut short).is_err(), "{value:?}");
        }
        ours
    }

    /// For values with no integer wider than a byte: postcard's bytes.
    fn same_as_postcard<T: Serialize + ?Sized + fmt::Debug>(value: &T) {
        assert_eq!(
            consistent(value),
            postcard::to_allocvec(value).unwrap(),
            "{value:?}"
        );
    }

    #[test]
    fn wide_integers_are_whole_and_little_endian() {
        for e in edges() {
            assert_eq!(consistent(&e), e.to_le_bytes());
            assert_eq!(consistent(&(e as i128)), (e as i128).to_le_bytes());
            assert_eq!(consistent(&(e as u64)), (e as u64).to_le_bytes());
            assert_eq!(consistent(&(e as usize)), (e as u64).to_le_bytes());
            assert_eq!(
                consistent(&(e as i64).wrapping_neg()),
                (e as i64).wrapping_neg().to_le_bytes()
            );
            assert_eq!(consistent(&(e as u32)), (e as u32).to_le_bytes());
            assert_eq!(consistent(&(e as i32)), (e as i32).to_le_bytes());
            assert_eq!(consistent(&(e as u16)), (e as u16).to_le_bytes());
            assert_eq!(consistent(&(e as i16)), (e as i16).to_le_bytes());
        }
        // Among the rest: lengths, tags and variant indices stay varints.
        let mixed = (
            1u8,
            0x0102u16,
            Some(-2i32),
            vec![3u64],
            Shape::Rect(-1i64, 0),
        );
        let mut expect = vec![1, 0x02, 0x01, 1, 0xfe, 0xff, 0xff, 0xff, 1];
        expect.extend(3u64.to_le_bytes());
        expect.push(2);
        expect.extend((-1i64).to_le_bytes());
        expect.extend(0i64.to_le_bytes());
        assert_eq!(consistent(&mixed), expect);
        let long = vec![0u8; 300];
        assert_eq!(&consistent(&long)[..2], &[0xac, 0x02]);
    }

    /// A field left out by `skip_serializing_if` is refused at the sender, saying why,
    /// in a struct and in a struct variant: the receiver read the next field's bytes in
    /// its place (here `a` came back as 2, and `b` as `[9]`).
    #[test]
    fn a_skipped_field_is_refused() {
        #[derive(Serialize, serde::Deserialize, PartialEq, Debug)]
        struct S {
            #[serde(skip_serializing_if = "is_zero")]
            a: u8,
            b: Vec<u8>,
        }
        #[derive(Serialize)]
        enum E {
            V {
                #[serde(skip_serializing_if = "Option::is_none")]
                a: Option<u8>,
            },
        }
        fn is_zero(x: &u8) -> bool {
            *x == 0
        }
        let skipped = S {
            a: 0,
            b: vec![1, 9],
        };
        match crate::wire::codec::encode(&skipped) {
            Err(e) => assert!(e.message().contains("field `a` is skipped"), "{e}"),
            Ok(e) => panic!(
                "encoded, and read back as {:?}",
                crate::wire::codec::decode::<S>(&e.bytes, e.fds)
            ),
        }
        let e = to_vec(&E::V { a: None }, Vec::new()).unwrap_err();
        assert!(e.to_string().contains("field `a` is skipped"), "{e}");
        // Written, it travels.
        let kept = S {
            a: 3,
            b: vec![1, 9],
        };
        let e = crate::wire::codec::encode(&kept).unwrap();
        assert_eq!(
            crate::wire::codec::decode::<S>(&e.bytes, e.fds).unwrap(),
            kept
        );
    }

    #[test]
    fn text_and_odd_shapes_match_postcard() {
        same_as_postcard(&'\u{10FFFF}');
        same_as_postcard(&"é€😀".to_string());
        same_as_postcard(&"x".repeat(300));
        same_as_postcard(&(f32::NAN, f64::NEG_INFINITY, -0.0f64));
        same_as_postcard(&Some(Some(())));
        same_as_postcard(&Vec::<Shape<u8>>::new());
        same_as_postcard(&Shape::Named {
            name: "hexagon".into(),
            sides: 6u8,
        });
        same_as_postcard(&vec![7u8; 1000]);
        same_as_postcard(&(i8::MIN, u8::MAX, true, ()));
        consistent(&(0..5000u64).map(|x| x * x * x).collect::<Vec<_>>());
        consistent(&std::net::Ipv4Addr::LOCALHOST);
        consistent(&std::time::Duration::from_nanos(123_456_789_012));
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
        fn plain_values_encode_as_postcard_does(value in sample::<u8>(), prefix in proptest::collection::vec(any::<u8>(), 0..9)) {
            same_as_postcard(&value);
            // Appended after what the vector held.
            let out = to_vec(&value, prefix.clone()).unwrap();
            prop_assert_eq!(&out[..prefix.len()], &prefix[..]);
            let back: Plain = postcard::from_bytes(&out[prefix.len()..]).unwrap();
            // NaN is not equal to itself: compare encodings instead.
            prop_assert_eq!(to_vec(&back, Vec::new()).unwrap(), to_vec(&value, Vec::new()).unwrap());
        }

        #[test]
        fn every_value_decodes_back(value in wide()) {
            let bytes = consistent(&value);
            let mut de = crate::wire::decoder::Decoder::new(&bytes);
            let back = <Wide as serde::Deserialize>::deserialize(&mut de).unwrap();
            prop_assert!(de.rest().is_empty());
            prop_assert_eq!(to_vec(&back, Vec::new()).unwrap(), bytes);
        }
    }
}
