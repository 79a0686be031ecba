"""atoll.planner"""
