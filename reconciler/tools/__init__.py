"""The programs run on devices and pool files: mkfs and friends, losetup, thin_ls.

Beside `reconciler.dm` (the kernel's device-mapper), not inside it: these programs are not
dm calls, so they fail with their own ToolError, classified like a DmError (a ClassifiedError
with an errno name and a temporary/permanent decision) so that reconcile decides a retry the
same way for both. They run through `dm.host.Host`, the one place that runs programs.
"""
