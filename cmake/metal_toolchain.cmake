# The Metal shader toolchain for fastllm.metallib: the `metal` flags, and proof at configure time
# that the compiler runs. Included by CMakeLists.txt; tests/metal/test_build_config.py also runs
# it in script mode (cmake -P) with a stand-in xcrun, so that it is checked on Linux too.
#
#   fastllm_metal_toolchain(<flags-var> <work-dir>)
#
# sets XCRUN and <flags-var>, or stops the configuration with the compiler's own message and the
# fix. `xcrun -f metal` alone proves nothing: Xcode 26 installs a stub that is found, and fails on
# every compile until the Metal Toolchain component is downloaded ("cannot execute tool 'metal'
# due to missing Metal Toolchain").

# Metal 3.0 is the language of metal/*.metal; it needs macOS 13, which is also fastllm's floor.
set(FASTLLM_METAL_STD "metal3.0")
set(FASTLLM_MACOS_MIN "13.0")

function(fastllm_metal_toolchain out_flags work_dir)
  if(NOT XCRUN)
    find_program(XCRUN xcrun)
  endif()
  set(fix "Install Xcode and select it with `sudo xcode-select -s /Applications/Xcode.app` (the \
Command Line Tools alone have no Metal compiler); on Xcode 26 and later also run \
`xcodebuild -downloadComponent MetalToolchain`. Or install the prebuilt macOS arm64 wheel.")
  if(NOT XCRUN)
    message(FATAL_ERROR "fastllm: xcrun was not found, so there is no Metal shader compiler. ${fix}")
  endif()

  # The AIR targets the deployment target, or the SDK's macOS when none is given (a plain
  # `pip install` from source sets none), and a metallib built for a newer macOS is refused by
  # newLibraryWithURL on an older one: default to the package's floor.
  set(min "${FASTLLM_MACOS_MIN}")
  if(CMAKE_OSX_DEPLOYMENT_TARGET AND CMAKE_OSX_DEPLOYMENT_TARGET VERSION_GREATER min)
    set(min "${CMAKE_OSX_DEPLOYMENT_TARGET}")
  endif()
  # -fno-fast-math: fast math lets the compiler fold the NaN/inf and precision-sensitive paths
  # (softmax sentinels, rope angles) that the kernels are tested for in the emulator.
  set(flags -std=${FASTLLM_METAL_STD} -mmacosx-version-min=${min} -fno-fast-math -Wall)

  # One kernel through metal and metallib, with the flags the build uses.
  file(MAKE_DIRECTORY "${work_dir}")
  file(WRITE "${work_dir}/probe.metal"
       "kernel void fastllm_probe(device float *y [[buffer(0)]]) { y[0] = 1.0f; }\n")
  foreach(step metal metallib)
    if(step STREQUAL "metal")
      set(cmd ${XCRUN} -sdk macosx metal ${flags} -c probe.metal -o probe.air)
    else()
      set(cmd ${XCRUN} -sdk macosx metallib probe.air -o probe.metallib)
    endif()
    execute_process(COMMAND ${cmd} WORKING_DIRECTORY "${work_dir}" RESULT_VARIABLE rc
                    OUTPUT_VARIABLE out ERROR_VARIABLE out)
    if(NOT rc EQUAL 0)
      string(REPLACE ";" " " shown "${cmd}")
      message(FATAL_ERROR "fastllm: the Metal toolchain cannot build a one-line kernel.\n"
                          "  ${shown}\nexited with ${rc}:\n${out}\n${fix}")
    endif()
  endforeach()
  message(STATUS "fastllm: Metal toolchain OK (metal ${flags})")
  set(XCRUN "${XCRUN}" PARENT_SCOPE)
  set(${out_flags} ${flags} PARENT_SCOPE)
endfunction()
