"""atoll.kernels"""
