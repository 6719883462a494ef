//! The built-in sources and consumers, written on the SDK's `Source` and `Consumer`
//! traits exactly as a user's would be: served by `flowplane-connect`.
