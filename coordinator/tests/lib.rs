//! The coordinator's integration tests: one binary, one module per area.

mod cases {
    mod grpc;
    mod hostile;
    mod integrity;
    mod limits;
    mod researchers;
    mod scale;
    mod site;
    mod store;
    mod validators;
}
