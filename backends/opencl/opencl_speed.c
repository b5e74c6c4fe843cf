/* An OpenCL device's read bandwidth and f32 peak: drivers report neither, and discovery leaves a
 * device it cannot cost out of every plan. Measured once on the device with two small kernels
 * and cached beside the program cache (opencl_internal.h). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backends/opencl/opencl_internal.h"
#include "runtime/atomic_file.h"
#include "runtime/clock.h"
#include "runtime/hash.h"

/* A read pass over 64 MiB (float4 per work item, one float written back per 4 read), and 1024
 * steps of 8 independent float4 multiply-adds per work item. */
#define READ_BYTES (64u << 20)
#define FMA_STEPS 1024
#define REPEATS 3

static const char speed_source[] =
    "__kernel void moira_speed_read(__global const float4 *a, __global float *out) {\n"
    "    size_t i = get_global_id(0);\n"
    "    float4 v = a[i];\n"
    "    out[i] = v.x + v.y + v.z + v.w;\n"
    "}\n"
    "__kernel void moira_speed_fma(__global float *out, float x) {\n"
    "    float4 a0 = x, a1 = x + 1, a2 = x + 2, a3 = x + 3, a4 = x + 4, a5 = x + 5, a6 = x + 6,\n"
    "           a7 = x + 7;\n"
    "    for (int i = 0; i < 1024; i++) {\n"
    "        a0 = mad(a0, x, 0.5f); a1 = mad(a1, x, 0.5f); a2 = mad(a2, x, 0.5f);\n"
    "        a3 = mad(a3, x, 0.5f); a4 = mad(a4, x, 0.5f); a5 = mad(a5, x, 0.5f);\n"
    "        a6 = mad(a6, x, 0.5f); a7 = mad(a7, x, 0.5f);\n"
    "    }\n"
    "    float4 s = a0 + a1 + a2 + a3 + a4 + a5 + a6 + a7;\n"
    "    out[get_global_id(0)] = s.x + s.y + s.z + s.w;\n"
    "}\n";

/* The cache file for this device and driver: the figures change with neither the kernels'
 * source nor Moira's options, only with the hardware and driver. */
static bool speed_path(const opencl_device_t *device, char *out, size_t size) {
    char dir[4096];
    if (!moira_opencl_cache_dir(dir, sizeof(dir))) return false;
    uint64_t key = MOIRA_FNV1A64_BASIS;
    const char *parts[] = {device->platform_name, device->base.info.model,
                           device->base.info.driver_version, device->device_version};
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++)
        key = moira_fnv1a64(key, parts[i], strlen(parts[i]) + 1);
    return (size_t)snprintf(out, size, "%s/opencl-speed-%016llx.txt", dir,
                            (unsigned long long)key) < size;
}

/* Two positive numbers from the cache file, or false. */
static bool read_cached(const char *path, double *out_gbs, double *out_tflops) {
    FILE *f = fopen(path, "r");
    if (!f) return false;
    double gbs = 0, tflops = 0;
    bool ok = fscanf(f, "bandwidth_gbs %lf tflops_f32 %lf", &gbs, &tflops) == 2 && gbs > 0 &&
              tflops > 0 && gbs < 1e6 && tflops < 1e6;
    fclose(f);
    if (ok) {
        *out_gbs = gbs;
        *out_tflops = tflops;
    }
    return ok;
}

/* Best of REPEATS timings of one launch of `kernel` over `global` work items. */
static moira_status_t best_time(cl_command_queue queue, cl_kernel kernel, size_t global,
                                double *out_s) {
    *out_s = 0;
    for (int i = 0; i <= REPEATS; i++) { /* the first launch warms up */
        double start = moira_now_seconds();
        cl_int code = clEnqueueNDRangeKernel(queue, kernel, 1, NULL, &global, NULL, 0, NULL, NULL);
        if (code == CL_SUCCESS) code = clFinish(queue);
        if (code != CL_SUCCESS) return moira_opencl_error(code, "timing a speed kernel");
        double s = moira_now_seconds() - start;
        if (i > 0 && (*out_s == 0 || s < *out_s)) *out_s = s;
    }
    return MOIRA_OK_STATUS;
}

/* Runs both kernels on the device. Everything made here is released before returning. */
static moira_status_t measure(opencl_device_t *device, double *out_gbs, double *out_tflops) {
    cl_int code = CL_SUCCESS;
    const char *source = speed_source;
    cl_program program = clCreateProgramWithSource(device->context, 1, &source, NULL, &code);
    if (code != CL_SUCCESS) return moira_opencl_error(code, "clCreateProgramWithSource");
    cl_command_queue queue = NULL;
    cl_kernel read = NULL, fma = NULL;
    cl_mem in = NULL, out = NULL;
    size_t n4 = READ_BYTES / 16,
           units =
               (size_t)(device->base.info.compute_units > 0 ? device->base.info.compute_units : 1);
    size_t fma_items = units * 32768;
    moira_status_t status = MOIRA_OK_STATUS;
    code = clBuildProgram(program, 1, &device->device, "", NULL, NULL);
    if (code == CL_SUCCESS) queue = clCreateCommandQueue(device->context, device->device, 0, &code);
    if (code == CL_SUCCESS) read = clCreateKernel(program, "moira_speed_read", &code);
    if (code == CL_SUCCESS) fma = clCreateKernel(program, "moira_speed_fma", &code);
    if (code == CL_SUCCESS)
        in = clCreateBuffer(device->context, CL_MEM_READ_ONLY, READ_BYTES, NULL, &code);
    size_t out_bytes = (n4 > fma_items ? n4 : fma_items) * sizeof(float);
    if (code == CL_SUCCESS)
        out = clCreateBuffer(device->context, CL_MEM_WRITE_ONLY, out_bytes, NULL, &code);
    float zero = 0, x = 0.999f;
    if (code == CL_SUCCESS)
        code = clEnqueueFillBuffer(queue, in, &zero, sizeof(zero), 0, READ_BYTES, 0, NULL, NULL);
    if (code == CL_SUCCESS) code = clSetKernelArg(read, 0, sizeof(in), &in);
    if (code == CL_SUCCESS) code = clSetKernelArg(read, 1, sizeof(out), &out);
    if (code == CL_SUCCESS) code = clSetKernelArg(fma, 0, sizeof(out), &out);
    if (code == CL_SUCCESS) code = clSetKernelArg(fma, 1, sizeof(x), &x);
    if (code != CL_SUCCESS) status = moira_opencl_error(code, "setting up the speed kernels");
    double read_s = 0, fma_s = 0;
    if (!status) status = best_time(queue, read, n4, &read_s);
    if (!status) status = best_time(queue, fma, fma_items, &fma_s);
    if (!status && (read_s <= 0 || fma_s <= 0))
        status = moira_status_make(MOIRA_CODE_DEVICE, "the speed kernels took no time");
    if (!status) {
        *out_gbs = ((double)READ_BYTES + (double)n4 * 4.0) / read_s / 1e9;
        *out_tflops = (double)fma_items * FMA_STEPS * 8.0 * 4.0 * 2.0 / fma_s / 1e12;
    }
    if (out) clReleaseMemObject(out);
    if (in) clReleaseMemObject(in);
    if (fma) clReleaseKernel(fma);
    if (read) clReleaseKernel(read);
    if (queue) clReleaseCommandQueue(queue);
    clReleaseProgram(program);
    return status;
}

moira_status_t moira_opencl_speed(opencl_device_t *device, bool may_measure, double *out_gbs,
                                  double *out_tflops) {
    *out_gbs = *out_tflops = 0;
    char path[4200];
    bool cacheable = speed_path(device, path, sizeof(path));
    if (cacheable && read_cached(path, out_gbs, out_tflops)) return MOIRA_OK_STATUS;
    if (!may_measure) return MOIRA_OK_STATUS;
    MOIRA_RETURN_IF_ERROR(measure(device, out_gbs, out_tflops));
    if (!cacheable) return MOIRA_OK_STATUS;
    moira_atomic_file_t file;
    moira_status_t status = moira_atomic_open(path, &file);
    if (!status) {
        fprintf(file.stream, "bandwidth_gbs %.3f tflops_f32 %.5f\n", *out_gbs, *out_tflops);
        status = moira_atomic_commit(&file);
    }
    moira_status_free(status); /* an unwritable cache only means measuring again next time */
    return MOIRA_OK_STATUS;
}
