//! The codec: serde with postcard.
//!
//! Every value that crosses a process boundary goes through here, so the format can be
//! changed in one place. Postcard is compact, has a documented stable wire format, and
//! its decoder returns errors (never panics) on malformed input and bounds its
//! preallocation by what the input can hold.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::CodecError;
use crate::sys::OwnedFd;

/// An encoded value: its bytes and the descriptors that travel with it.
#[derive(Debug, Default)]
pub(crate) struct Encoded {
    pub(crate) bytes: Vec<u8>,
    pub(crate) fds: Vec<OwnedFd>,
}

/// Encodes a value.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Encoded, CodecError> {
    match postcard::to_stdvec(value) {
        Ok(bytes) => Ok(Encoded {
            bytes,
            fds: Vec::new(),
        }),
        Err(e) => {
            // Postcard drops the message a `Serialize` implementation gives; find it again.
            let why = probe::message(value).unwrap_or_else(|| e.to_string());
            Err(CodecError::new(format!(
                "cannot encode a `{}`: {why}",
                std::any::type_name::<T>()
            )))
        }
    }
}

/// Decodes a value of type `T`; trailing bytes are an error, since they mean the two
/// sides disagree on the type.
pub(crate) fn decode<T: DeserializeOwned>(
    bytes: &[u8],
    fds: Vec<OwnedFd>,
) -> Result<T, CodecError> {
    drop(fds);
    let what = std::any::type_name::<T>();
    let (value, rest) = postcard::take_from_bytes(bytes)
        .map_err(|e| CodecError::new(format!("cannot decode a `{what}`: {e}")))?;
    if !rest.is_empty() {
        return Err(CodecError::new(format!(
            "cannot decode a `{what}`: {} bytes left over, so the sender's type differs",
            rest.len()
        )));
    }
    Ok(value)
}

/// A serializer that writes nothing and keeps the first custom error message: run on
/// the failure path only, to recover what the real encoder threw away.
mod probe {
    use std::fmt;

    use serde::ser::{self, Serialize};

    pub(super) fn message<T: Serialize + ?Sized>(value: &T) -> Option<String> {
        value.serialize(Probe).err().map(|e| e.0)
    }

    #[derive(Debug)]
    pub(super) struct Message(String);

    impl fmt::Display for Message {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(&self.0)
        }
    }

    impl std::error::Error for Message {}

    impl ser::Error for Message {
        fn custom<T: fmt::Display>(msg: T) -> Self {
            Message(msg.to_string())
        }
    }

    struct Probe;

    type R = Result<(), Message>;

    macro_rules! accept {
        ($($name:ident($($arg:ty),*);)*) => {
            $(fn $name(self, $(_: $arg),*) -> R { Ok(()) })*
        };
    }

    impl ser::Serializer for Probe {
        type Ok = ();
        type Error = Message;
        type SerializeSeq = Probe;
        type SerializeTuple = Probe;
        type SerializeTupleStruct = Probe;
        type SerializeTupleVariant = Probe;
        type SerializeMap = Probe;
        type SerializeStruct = Probe;
        type SerializeStructVariant = Probe;

        accept! {
            serialize_bool(bool); serialize_i8(i8); serialize_i16(i16); serialize_i32(i32);
            serialize_i64(i64); serialize_i128(i128); serialize_u8(u8); serialize_u16(u16);
            serialize_u32(u32); serialize_u64(u64); serialize_u128(u128); serialize_f32(f32);
            serialize_f64(f64); serialize_char(char); serialize_str(&str);
            serialize_bytes(&[u8]); serialize_none(); serialize_unit();
            serialize_unit_struct(&'static str);
            serialize_unit_variant(&'static str, u32, &'static str);
        }

        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> R {
            v.serialize(Probe)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> R {
            v.serialize(Probe)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            v: &T,
        ) -> R {
            v.serialize(Probe)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_tuple(self, _: usize) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Probe, Message> {
            Ok(Probe)
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
            _: usize,
        ) -> Result<Probe, Message> {
            Ok(Probe)
        }
    }

    macro_rules! compound {
        ($($trait:ident :: $method:ident ($($key:ty),*);)*) => {$(
            impl ser::$trait for Probe {
                type Ok = ();
                type Error = Message;
                fn $method<T: Serialize + ?Sized>(&mut self, $(_: $key,)* v: &T) -> R {
                    v.serialize(Probe)
                }
                fn end(self) -> R {
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

    impl ser::SerializeMap for Probe {
        type Ok = ();
        type Error = Message;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> R {
            k.serialize(Probe)
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> R {
            v.serialize(Probe)
        }
        fn end(self) -> R {
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_serialize_errors_keep_their_message() {
        struct Refuses;
        impl Serialize for Refuses {
            fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
                Err(serde::ser::Error::custom("no, thank you"))
            }
        }
        let nested = vec![(1u8, Some(Refuses))];
        let e = encode(&nested).unwrap_err();
        assert!(e.message().contains("no, thank you"), "{e}");
        assert!(e.message().contains("Refuses"), "{e}");
    }

    #[test]
    fn mismatched_types_are_errors() {
        let bytes = encode(&(1u32, 2u32, 3u32)).unwrap().bytes;
        assert!(decode::<String>(&bytes, Vec::new()).is_err());
        assert!(decode::<u32>(&bytes, Vec::new()).is_err());
        assert_eq!(
            decode::<(u32, u32, u32)>(&bytes, Vec::new()).unwrap(),
            (1, 2, 3)
        );
    }
}
