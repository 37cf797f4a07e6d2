//! The messages of TensorBoard's event files that elbo writes, declared with prost's
//! derive (field numbers as in tensorboard/compat/proto: event.proto, summary.proto,
//! tensor.proto, tensor_shape.proto). Fields elbo never writes are left out; a reader
//! skips unknown fields, so files of other writers still decode.

/// One record of an event file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Event {
    /// Seconds since the Unix epoch.
    #[prost(double, tag = "1")]
    pub wall_time: f64,
    /// The global step the event belongs to.
    #[prost(int64, tag = "2")]
    pub step: i64,
    /// What the event holds.
    #[prost(oneof = "What", tags = "3, 5, 7")]
    pub what: Option<What>,
}

/// What an [`Event`] holds.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum What {
    /// The first record of a file: `brain.Event:2`.
    #[prost(string, tag = "3")]
    FileVersion(String),
    /// Values under tags.
    #[prost(message, tag = "5")]
    Summary(Summary),
    /// A session's start (TensorBoard drops the events of earlier files past its step).
    #[prost(message, tag = "7")]
    SessionLog(SessionLog),
}

/// A session's status change.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SessionLog {
    /// 1: START.
    #[prost(int32, tag = "1")]
    pub status: i32,
}

/// `SessionLog`'s START status.
pub const SESSION_START: i32 = 1;

/// Values under tags.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Summary {
    /// The values.
    #[prost(message, repeated, tag = "1")]
    pub value: Vec<Value>,
}

/// One tagged value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Value {
    /// The tag (`train/elbo`, ...).
    #[prost(string, tag = "1")]
    pub tag: String,
    /// Which plugin shows it (text).
    #[prost(message, optional, tag = "9")]
    pub metadata: Option<SummaryMetadata>,
    /// The value.
    #[prost(oneof = "Kind", tags = "2, 4, 8")]
    pub kind: Option<Kind>,
}

/// A [`Value`]'s payload.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Kind {
    /// A scalar.
    #[prost(float, tag = "2")]
    SimpleValue(f32),
    /// An encoded image.
    #[prost(message, tag = "4")]
    Image(Image),
    /// A tensor (text: a string tensor).
    #[prost(message, tag = "8")]
    Tensor(TensorProto),
}

/// An encoded image (PNG).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Image {
    /// Pixels high.
    #[prost(int32, tag = "1")]
    pub height: i32,
    /// Pixels wide.
    #[prost(int32, tag = "2")]
    pub width: i32,
    /// 1 grey, 2 grey and alpha, 3 RGB, 4 RGBA.
    #[prost(int32, tag = "3")]
    pub colorspace: i32,
    /// The PNG file's bytes.
    #[prost(bytes = "vec", tag = "4")]
    pub encoded_image_string: Vec<u8>,
}

/// Which plugin a value is for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryMetadata {
    /// The plugin.
    #[prost(message, optional, tag = "1")]
    pub plugin_data: Option<PluginData>,
}

/// A plugin's name (and its own data, none here).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PluginData {
    /// `text`, ...
    #[prost(string, tag = "1")]
    pub plugin_name: String,
}

/// A tensor: here only strings (the text plugin's values).
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorProto {
    /// The element type: 7 for strings.
    #[prost(int32, tag = "1")]
    pub dtype: i32,
    /// Its shape.
    #[prost(message, optional, tag = "2")]
    pub tensor_shape: Option<TensorShape>,
    /// The strings.
    #[prost(bytes = "vec", repeated, tag = "8")]
    pub string_val: Vec<Vec<u8>>,
}

/// `DataType.DT_STRING`.
pub const DT_STRING: i32 = 7;

/// A tensor's shape.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TensorShape {
    /// Its dimensions.
    #[prost(message, repeated, tag = "2")]
    pub dim: Vec<Dim>,
}

/// One dimension.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Dim {
    /// Its size.
    #[prost(int64, tag = "1")]
    pub size: i64,
}
