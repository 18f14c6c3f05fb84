//! The coordinator's integration tests: one binary, one module per area.

mod cases {
    mod grpc;
    mod integrity;
    mod store;
    mod validators;
}
