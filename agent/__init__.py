"""atoll.agent"""
