//! End-to-end tests: real binaries over real sockets. One binary, one
//! module per scenario.

mod cases {
    mod blobs;
    mod exec;
    mod job;
    mod mandelbrot;
    mod resume;
    mod signing;
    mod third_party;
}
