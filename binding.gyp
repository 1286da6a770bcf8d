{
  "targets": [
    {
      "target_name": "faultline_native",
      "sources": [
        "native/src/addon.cc",
        "native/src/errors.cc",
        "native/src/uffd.cc",
        "native/src/epoll.cc",
        "native/src/scm.cc",
        "native/src/mmap.cc",
        "native/src/fill.cc"
      ],
      "include_dirs": ["<!(node -p \"require('node-addon-api').include_dir\")", "native/src"],
      "defines": ["NAPI_VERSION=8", "NAPI_DISABLE_CPP_EXCEPTIONS"],
      "cflags_cc": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter", "-std=c++17"]
    }
  ]
}
