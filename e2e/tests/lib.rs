//! End-to-end tests: real binaries over real sockets. One binary, one
//! module per scenario.

mod cases {
    mod blobs;
    mod browser;
    mod code_signing;
    mod exec;
    mod faults;
    mod floating_point;
    mod init;
    mod install;
    mod integrity;
    mod job;
    mod join;
    mod local_page;
    mod object_store;
    mod peers;
    mod prefs;
    mod python;
    mod reflection;
    mod researchers;
    mod resume;
    mod signing;
    mod suspend;
    mod third_party;
    mod tls;
    mod web;
}
