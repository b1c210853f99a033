"""A local emulator of the Alibaba Cloud ALB API (2020-06-16) for tests, benchmarks and the demo.

It authenticates requests the way the cloud gateway does, keeps server-group state, runs asynchronous
jobs, answers with the documented error codes, and can inject faults through an unsigned admin API.
"""
