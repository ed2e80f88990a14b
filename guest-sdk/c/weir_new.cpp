/* The C++ allocation functions of a Weir guest: out of memory is a trap.
 *
 * C++ guests are built without exceptions, and then libc++abi's `operator
 * new` returns NULL when malloc fails (it cannot throw std::bad_alloc), so
 * `std::vector::push_back` past the task's memory limit would write through
 * a null pointer into the bottom of linear memory, which in WebAssembly is
 * ordinary memory, not a fault. These definitions replace those (libc++abi
 * marks its own weak) and abort instead: the host sees its memory limit was
 * hit and fails the task with "exceeded its memory limit". The nothrow
 * forms keep their contract and return NULL. `host build` compiles this file
 * into every C++ guest.
 */
#include <cstdlib>
#include <new>

namespace {
void *allocate(std::size_t size) {
    void *p = std::malloc(size == 0 ? 1 : size);
    if (p == nullptr) std::abort();
    return p;
}

void *allocate_aligned(std::size_t size, std::align_val_t alignment) {
    std::size_t align = static_cast<std::size_t>(alignment);
    if (align < sizeof(void *)) align = sizeof(void *);
    void *p = nullptr;
    if (posix_memalign(&p, align, size == 0 ? 1 : size) != 0) return nullptr;
    return p;
}
} // namespace

void *operator new(std::size_t size) { return allocate(size); }
void *operator new[](std::size_t size) { return allocate(size); }
void *operator new(std::size_t size, const std::nothrow_t &) noexcept { return std::malloc(size == 0 ? 1 : size); }
void *operator new[](std::size_t size, const std::nothrow_t &) noexcept { return std::malloc(size == 0 ? 1 : size); }

void *operator new(std::size_t size, std::align_val_t alignment) {
    void *p = allocate_aligned(size, alignment);
    if (p == nullptr) std::abort();
    return p;
}
void *operator new[](std::size_t size, std::align_val_t alignment) { return operator new(size, alignment); }
void *operator new(std::size_t size, std::align_val_t alignment, const std::nothrow_t &) noexcept {
    return allocate_aligned(size, alignment);
}
void *operator new[](std::size_t size, std::align_val_t alignment, const std::nothrow_t &) noexcept {
    return allocate_aligned(size, alignment);
}
