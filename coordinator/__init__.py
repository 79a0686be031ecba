"""atoll.coordinator"""
