//! The codec every generated client and server uses: prost encoding, as tonic's own,
//! with smaller first buffers. tonic starts each stream's encode and decode buffer at
//! 8 KiB; a pipeline session holds four of them (its request and response streams and a
//! Process stream per remote node), which made them most of an idle session's memory.
//! A buffer grows to the message it carries, so large messages cost no more; the
//! yield threshold (how much is encoded before it is handed to HTTP/2) stays tonic's.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// First capacity of a stream's encode and decode buffers.
pub const CODEC_BUFFER_BYTES: usize = 1024;

/// How much is encoded before it is handed on (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with [`CODEC_BUFFER_BYTES`] first buffers.
#[derive(Debug, Clone, Copy)]
pub struct FlowCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for FlowCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(CODEC_BUFFER_BYTES, YIELD_THRESHOLD)
}

impl<T, U> Codec for FlowCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
