//! The coordinator's integration tests: one binary, one module per area.

mod cases {
    mod grpc;
    mod integrity;
    mod researchers;
    mod store;
    mod validators;
}
