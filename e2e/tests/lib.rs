//! End-to-end tests: real binaries over real sockets. One binary, one
//! module per scenario.

mod cases {
    mod blobs;
    mod exec;
    mod floating_point;
    mod job;
    mod prefs;
    mod resume;
    mod signing;
    mod third_party;
}
