# kiln — build, test, bench.
#
#   make            build/libkiln.a, build/kiln (CLI), build/kilnd (daemon)
#   make test       every test, in a release build and under ASan+UBSan, plus fuzzers
#   make bench      benchmarks (bench/)
#   make deps       install the Debian packages listed in deploy/packages.txt
#   make run        start kilnd in the foreground with its embedded defaults
#
# Layout rules that keep this file short:
#   core/**/*.c       -> libkiln.a   (SIMD code uses __attribute__((target("avx2,fma"))),
#                                   never global -m flags: one binary, run-time dispatch)
#   cli/*.c           -> kiln
#   server/*.c        -> kilnd
#   tests/test_*.c    -> one test program each (tests/util/*.c linked in)
#   tests/test_*.sh   -> shell tests, run with the built binaries
#   fuzz/fuzz_*.c     -> libFuzzer harnesses (clang), corpus in fuzz/corpus/<name>/
#   bench/bench_*.c   -> benchmark programs

CC      ?= cc
BUILD   ?= build
SAN     ?= 0
PKGS    := libpng jansson libzip libmicrohttpd sqlite3 libcurl libarchive libcrypto libprotobuf-c

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN    := -Wall -Wextra -Werror -Wshadow -Wno-unused-parameter
CFLAGS_ALL := -std=c11 $(WARN) -D_GNU_SOURCE -pthread -Icore -MMD -MP $(PKG_CFLAGS)
ifeq ($(SAN),1)
  OPT   := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
  LDSAN := -fsanitize=address,undefined
else
  OPT   := -O2 -g
  LDSAN :=
endif
CFLAGS_ALL += $(OPT) $(CFLAGS)
LDLIBS_ALL := $(LDSAN) -pthread $(PKG_LIBS) -lm $(LDLIBS)

CORE_SRC   := $(sort $(wildcard core/*.c core/*/*.c core/loader/onnx/*.c))
CLI_SRC    := $(sort $(wildcard cli/*.c))
SERVER_SRC := $(sort $(wildcard server/*.c))
TUTIL_SRC  := $(sort $(wildcard tests/util/*.c))
TEST_SRC   := $(sort $(wildcard tests/test_*.c))
BENCH_SRC  := $(sort $(wildcard bench/bench_*.c))
FUZZ_SRC   := $(sort $(wildcard fuzz/fuzz_*.c))

CORE_OBJ   := $(CORE_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ    := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
SERVER_OBJ := $(SERVER_SRC:%.c=$(BUILD)/obj/%.o)
TUTIL_OBJ  := $(TUTIL_SRC:%.c=$(BUILD)/obj/%.o)
TEST_BIN   := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
BENCH_BIN  := $(BENCH_SRC:bench/%.c=$(BUILD)/bench/%)
FUZZ_BIN   := $(FUZZ_SRC:fuzz/%.c=build/fuzz/%)

LIB := $(BUILD)/libkiln.a

.PHONY: all test test-release test-san fuzz fuzz-run bench deps run clean
all: $(LIB) $(BUILD)/kiln $(BUILD)/kilnd

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

# kilnd embeds its API document, SQL migrations and dashboard; the generated
# file is committed (so a checkout builds without running it) and remade
# whenever one of its sources changes.
server/embedded_gen.c: server/gen_embed.sh server/openapi.json $(wildcard migrations/*.sql) $(wildcard static/*)
	sh server/gen_embed.sh

# The ONNX schema's C code (core/loader/onnx/onnx.pb-c.[ch]) is made by protoc-c
# (Debian's protobuf-c-compiler) from the vendored onnx.proto and committed, so a
# checkout builds without the compiler; remake it after changing onnx.proto.
.PHONY: onnx-proto
onnx-proto:
	cd core/loader/onnx && protoc-c --c_out=. onnx.proto

$(LIB): $(CORE_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BUILD)/kiln: $(CLI_OBJ) $(LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LDLIBS_ALL)

$(BUILD)/kilnd: $(SERVER_OBJ) $(LIB)
	$(CC) $(CFLAGS_ALL) $^ -o $@ $(LDLIBS_ALL)

$(BUILD)/tests/%: tests/%.c $(TUTIL_OBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -Itests/util $< $(TUTIL_OBJ) $(LIB) -o $@ $(LDLIBS_ALL)

$(BUILD)/bench/%: bench/%.c $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) $< $(LIB) -o $@ $(LDLIBS_ALL)

# The whole suite, one stage after the other: release build (all data), then
# ASan+UBSan (same tests; tests that sweep a whole benchmark use fewer images
# there), then the fuzzers. Builds inside each stage use every core.
NPROC := $(shell nproc 2>/dev/null || echo 2)
test:
	$(MAKE) test-release
	$(MAKE) test-san
	$(MAKE) fuzz-run

test-release:
	$(MAKE) -j$(NPROC) all tests-bin
	KILN_BUILD=$(BUILD) KILN_TEST_FULL=1 tests/run.sh $(BUILD)

test-san:
	$(MAKE) -j$(NPROC) BUILD=build/san SAN=1 all tests-bin
	KILN_BUILD=build/san tests/run.sh build/san

.PHONY: tests-bin
tests-bin: $(TEST_BIN)

# libFuzzer harnesses: the core is compiled once with clang, instrumented for
# coverage (fuzzer-no-link) and ASan+UBSan, and each harness links it.
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -Icore -fsanitize=address,undefined $(PKG_CFLAGS)
FUZZ_OBJ := $(CORE_SRC:%.c=build/fuzz/obj/%.o)
build/fuzz/obj/%.o: %.c
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -MMD -MP -c $< -o $@

build/fuzz/%: fuzz/%.c $(FUZZ_OBJ)
	@mkdir -p $(dir $@)
	clang $(FUZZ_CFLAGS) -fsanitize=fuzzer $< $(FUZZ_OBJ) -o $@ $(PKG_LIBS) -lm -pthread

fuzz: $(FUZZ_BIN)

FUZZ_SECONDS ?= 20
fuzz-run:
	$(MAKE) -j$(NPROC) fuzz
	tests/fuzz_run.sh $(FUZZ_SECONDS) $(FUZZ_BIN)

bench:
	$(MAKE) -j$(NPROC) all bench-bin
	bench/run.sh $(BUILD)

.PHONY: bench-bin
bench-bin: $(BENCH_BIN)


deps:
	deploy/install-deps.sh

run: all
	$(BUILD)/kilnd

clean:
	rm -rf build

-include $(shell find $(BUILD) build/san build/fuzz -name '*.d' 2>/dev/null)
