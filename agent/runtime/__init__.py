"""atoll.agent.runtime"""
