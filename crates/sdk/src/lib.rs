//! The processor SDK: implement one trait, get a production ProcessorService host.
